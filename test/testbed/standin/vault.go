package standin

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// Vault is a stand-in for HashiCorp Vault (a real Vault server cannot
// be built from this module proxy). It speaks the parts of Vault's HTTP API
// that sops and the webhook use, over TLS on loopback:
//
//   - POST/PUT /v1/auth/<mount>/login with {"role","jwt"}: the Kubernetes
//     auth method. The JWT is checked by Review, for real a TokenReview
//     against the test's API server, and must belong to the service account
//     bound to the role.
//   - POST/PUT /v1/<engine>/encrypt/<key> and /decrypt/<key>: the transit
//     engine, AES-256-GCM per key, "vault:v1:" ciphertexts, base64
//     plaintexts.
//
// Anything else answers 404. Requests need X-Vault-Token: RootToken or a
// token from a login, which expires after TokenTTL.
type Vault struct {
	// URL is https://127.0.0.1:PORT; CAFile the PEM CA it chains to.
	URL, CAFile string
	// RootToken may encrypt and decrypt without logging in (sops uses it
	// to encrypt test payloads).
	RootToken string
	// Logins and Decrypts count successful calls.
	Logins, Decrypts atomic.Int64

	review   func(ctx context.Context, jwt string) (string, bool, error)
	roles    map[string]string // role -> "system:serviceaccount:ns:name"
	tokenTTL time.Duration
	mount    string
	engine   string
	hang     atomic.Bool
	srv      *http.Server

	keys   aeadKeys
	mu     sync.Mutex
	tokens map[string]time.Time
}

// VaultOptions configure StartVault.
type VaultOptions struct {
	// Review authenticates a service-account JWT and returns its username.
	Review func(ctx context.Context, jwt string) (username string, ok bool, err error)
	// Roles binds each Kubernetes auth role to one service account,
	// "system:serviceaccount:<namespace>:<name>".
	Roles map[string]string
	// TokenTTL is the lease of a login token (default one hour).
	TokenTTL time.Duration
}

// TokenReviewer returns a Review func that asks the API server, as Vault's
// Kubernetes auth method does.
func TokenReviewer(kube kubernetes.Interface) func(context.Context, string) (string, bool, error) {
	return func(ctx context.Context, jwt string) (string, bool, error) {
		r, err := kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: jwt},
		}, metav1.CreateOptions{})
		if err != nil {
			return "", false, err
		}
		return r.Status.User.Username, r.Status.Authenticated, nil
	}
}

// StartVault starts the stand-in with its own CA, written to dir.
func StartVault(dir string, o VaultOptions) (*Vault, error) {
	ep, err := newTLSEndpoint(dir, "vault")
	if err != nil {
		return nil, err
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = time.Hour
	}
	v := &Vault{
		URL: ep.url, CAFile: ep.caFile, RootToken: randomHex(16),
		review: o.Review, roles: o.Roles, tokenTTL: o.TokenTTL, mount: "kubernetes", engine: "transit",
		tokens: map[string]time.Time{},
	}
	v.srv = ep.serve(v)
	return v, nil
}

// Recipients encrypts for transit key name with the sops CLI, as root.
func (v *Vault) Recipients(key string) sopskit.Recipients {
	return sopskit.Recipients{
		VaultTransit: []string{v.URL + "/v1/" + v.engine + "/keys/" + key},
		Env:          []string{"VAULT_TOKEN=" + v.RootToken, "VAULT_CACERT=" + v.CAFile},
	}
}

// RevokeAll forgets every login token, as a Vault restart or a revocation
// would.
func (v *Vault) RevokeAll() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.tokens = map[string]time.Time{}
}

// Close stops the stand-in.
func (v *Vault) Close() error { return v.srv.Close() }

// SetHanging makes every request hang until the client gives up (true), as
// an unreachable Vault behind a black-holing network would, or answer again.
func (v *Vault) SetHanging(on bool) { v.hang.Store(on) }

// ServeHTTP implements the API subset.
func (v *Vault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if v.hang.Load() {
		hang(r.Context())
		return
	}
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		vaultErr(w, http.StatusMethodNotAllowed, "unsupported method")
		return
	}
	var body map[string]string
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body); err != nil {
		vaultErr(w, http.StatusBadRequest, "bad JSON")
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/v1/")
	switch {
	case p == "auth/"+v.mount+"/login":
		v.login(w, r, body)
	case strings.HasPrefix(p, v.engine+"/encrypt/"):
		if v.authorized(r) {
			v.encrypt(w, strings.TrimPrefix(p, v.engine+"/encrypt/"), body)
		} else {
			vaultErr(w, http.StatusForbidden, "permission denied")
		}
	case strings.HasPrefix(p, v.engine+"/decrypt/"):
		if v.authorized(r) {
			v.decrypt(w, strings.TrimPrefix(p, v.engine+"/decrypt/"), body)
		} else {
			vaultErr(w, http.StatusForbidden, "permission denied")
		}
	default:
		vaultErr(w, http.StatusNotFound, "no handler for route")
	}
}

func (v *Vault) login(w http.ResponseWriter, r *http.Request, body map[string]string) {
	want, ok := v.roles[body["role"]]
	if !ok {
		vaultErr(w, http.StatusBadRequest, "invalid role name")
		return
	}
	user, authenticated, err := v.review(r.Context(), body["jwt"])
	if err != nil || !authenticated || user != want {
		vaultErr(w, http.StatusForbidden, "permission denied")
		return
	}
	tok := "hvs." + randomHex(16)
	v.mu.Lock()
	v.tokens[tok] = time.Now().Add(v.tokenTTL)
	v.mu.Unlock()
	v.Logins.Add(1)
	writeJSON(w, map[string]any{"auth": map[string]any{
		"client_token": tok, "lease_duration": int(v.tokenTTL.Seconds()), "renewable": true, "policies": []string{"sops"},
	}})
}

func (v *Vault) authorized(r *http.Request) bool {
	tok := r.Header.Get("X-Vault-Token")
	if tok == "" {
		return false
	}
	if tok == v.RootToken {
		return true
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	exp, ok := v.tokens[tok]
	return ok && time.Now().Before(exp)
}

func (v *Vault) aead(key string) cipher.AEAD { return v.keys.get(key) }

func (v *Vault) encrypt(w http.ResponseWriter, key string, body map[string]string) {
	plain, err := base64.StdEncoding.DecodeString(body["plaintext"])
	if err != nil {
		vaultErr(w, http.StatusBadRequest, "plaintext is not base64")
		return
	}
	gcm := v.aead(key)
	nonce := make([]byte, gcm.NonceSize())
	_, _ = rand.Read(nonce)
	ct := gcm.Seal(nonce, nonce, plain, []byte(key))
	writeJSON(w, map[string]any{"data": map[string]any{"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(ct)}})
}

func (v *Vault) decrypt(w http.ResponseWriter, key string, body map[string]string) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(body["ciphertext"], "vault:v1:"))
	gcm := v.aead(key)
	if err != nil || len(raw) < gcm.NonceSize() {
		vaultErr(w, http.StatusBadRequest, "invalid ciphertext")
		return
	}
	plain, err := gcm.Open(nil, raw[:gcm.NonceSize()], raw[gcm.NonceSize():], []byte(key))
	if err != nil {
		vaultErr(w, http.StatusBadRequest, "cipher: message authentication failed")
		return
	}
	v.Decrypts.Add(1)
	writeJSON(w, map[string]any{"data": map[string]any{"plaintext": base64.StdEncoding.EncodeToString(plain)}})
}

func vaultErr(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []string{msg}})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ConnectionCounter is a TLS-less TCP listener that only counts the
// connections it gets: a target for payloads that name addresses the
// webhook must never contact.
type ConnectionCounter struct {
	Addr  string
	Count atomic.Int64
	ln    net.Listener
}

// StartConnectionCounter listens on a free loopback port.
func StartConnectionCounter() (*ConnectionCounter, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &ConnectionCounter{Addr: ln.Addr().String(), ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.Count.Add(1)
			conn.Close()
		}
	}()
	return c, nil
}

// Close stops listening.
func (c *ConnectionCounter) Close() error { return c.ln.Close() }
