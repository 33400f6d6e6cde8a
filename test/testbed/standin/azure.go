package standin

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Azure is a stand-in for Microsoft Entra ID and Azure Key Vault
// (which cannot run here), on one loopback TLS port. It speaks what the real
// Azure SDK sends:
//
//   - Entra ID's OpenID configuration and v2.0 token endpoint for the client
//     credentials grant with a federated client assertion (Workload ID):
//     the assertion is a JWT verified for real against a JWKS (the test API
//     server's OIDC keys), with its issuer, the audience
//     api://AzureADTokenExchange and the one subject the app trusts.
//   - Key Vault's keys/{name}/{version}/decrypt and keys/{name}/encrypt
//     (RSA-OAEP-256; one version per key, "0123456789abcdef"), with the
//     bearer challenge the SDK answers, and only for tokens it issued.
//
// The challenge names the resource https://0.0.1:PORT so that the SDK's
// check "the vault host ends with .resource" holds for 127.0.0.1:PORT.
type Azure struct {
	// URL is https://127.0.0.1:PORT: the authority host and the vault URL.
	URL, CAFile        string
	TenantID, ClientID string
	// Tokens and Decrypts count successful calls.
	Tokens, Decrypts atomic.Int64

	jwks    func(ctx context.Context) (*jose.JSONWebKeySet, error)
	issuer  string
	subject string
	port    string
	hang    atomic.Bool
	srv     *http.Server

	mu     sync.Mutex
	tokens map[string]time.Time
	keys   map[string]*rsa.PrivateKey
}

// AzureOptions configure StartAzure.
type AzureOptions struct {
	JWKS    func(ctx context.Context) (*jose.JSONWebKeySet, error)
	Issuer  string
	Subject string
}

// StartAzure starts the stand-in with its own CA written to dir.
func StartAzure(dir string, o AzureOptions) (*Azure, error) {
	ep, err := newTLSEndpoint(dir, "azure")
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(ep.ln.Addr().String())
	a := &Azure{
		URL: ep.url, CAFile: ep.caFile,
		TenantID: "00000000-0000-0000-0000-0000000000aa", ClientID: "00000000-0000-0000-0000-0000000000bb",
		jwks: o.JWKS, issuer: o.Issuer, subject: o.Subject, port: port,
		tokens: map[string]time.Time{}, keys: map[string]*rsa.PrivateKey{},
	}
	a.srv = ep.serve(a)
	return a, nil
}

// Close stops the stand-in.
func (a *Azure) Close() error { return a.srv.Close() }

// SetHanging makes Key Vault calls hang until the client gives up.
func (a *Azure) SetHanging(on bool) { a.hang.Store(on) }

// Env is what the workload identity webhook injects into a pod.
func (a *Azure) Env(tokenFile string) []string {
	return []string{"AZURE_CLIENT_ID=" + a.ClientID, "AZURE_TENANT_ID=" + a.TenantID,
		"AZURE_FEDERATED_TOKEN_FILE=" + tokenFile, "AZURE_AUTHORITY_HOST=" + a.URL + "/"}
}

func (a *Azure) key(name string) *rsa.PrivateKey {
	a.mu.Lock()
	defer a.mu.Unlock()
	k, ok := a.keys[name]
	if !ok {
		k, _ = rsa.GenerateKey(rand.Reader, 2048)
		a.keys[name] = k
	}
	return k
}

// Wrap encrypts dataKey for key name with RSA-OAEP-256, base64url as sops
// stores it.
func (a *Azure) Wrap(name string, dataKey []byte) (string, error) {
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &a.key(name).PublicKey, dataKey, nil)
	return base64.RawURLEncoding.EncodeToString(ct), err
}

// ServeHTTP routes Entra ID and Key Vault requests.
func (a *Azure) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	base := a.URL + "/" + a.TenantID
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/"+a.TenantID+"/v2.0/.well-known/openid-configuration":
		writeJSON(w, map[string]any{
			"token_endpoint": base + "/oauth2/v2.0/token", "authorization_endpoint": base + "/oauth2/v2.0/authorize",
			"issuer": base + "/v2.0", "token_endpoint_auth_methods_supported": []string{"private_key_jwt", "client_secret_post"},
		})
	case r.Method == http.MethodPost && r.URL.Path == "/"+a.TenantID+"/oauth2/v2.0/token":
		a.token(w, r)
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/keys/") && strings.HasSuffix(r.URL.Path, "/decrypt"):
		a.decrypt(w, r)
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/keys/") && strings.HasSuffix(r.URL.Path, "/encrypt"):
		a.encrypt(w, r)
	default:
		http.Error(w, `{"error":{"code":"NotFound"}}`, http.StatusNotFound)
	}
}

func (a *Azure) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
		return
	}
	f := r.PostForm
	sub, err := a.verify(r.Context(), f.Get("client_assertion"))
	if f.Get("client_id") != a.ClientID || f.Get("grant_type") != "client_credentials" || err != nil || sub != a.subject {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client","error_description":"AADSTS70021: No matching federated identity record found for presented assertion."}`))
		return
	}
	tok := a.AdminToken()
	a.Tokens.Add(1)
	writeJSON(w, map[string]any{"token_type": "Bearer", "access_token": tok, "expires_in": 3600, "ext_expires_in": 3600})
}

func (a *Azure) verify(ctx context.Context, raw string) (string, error) {
	return verifyJWT(ctx, a.jwks, raw, a.issuer, "api://AzureADTokenExchange")
}

// AdminToken returns a Key Vault access token, as Entra ID issues it (the
// token endpoint's answer, and tests that need no workload identity).
func (a *Azure) AdminToken() string {
	tok := "eyJ0" + randomHex(24)
	a.mu.Lock()
	a.tokens[tok] = time.Now().Add(time.Hour)
	a.mu.Unlock()
	return tok
}

// KeyVersion is the one version of every stand-in key.
const KeyVersion = "0123456789abcdef"

// authorized answers the bearer challenge, or a hang, unless the request
// carries a token Entra ID issued.
func (a *Azure) authorized(w http.ResponseWriter, r *http.Request) bool {
	if a.hang.Load() {
		hang(r.Context())
		return false
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	exp, ok := a.tokens[tok]
	a.mu.Unlock()
	if !ok || time.Now().After(exp) {
		w.Header().Set("WWW-Authenticate", `Bearer authorization="`+a.URL+`/`+a.TenantID+`", resource="https://0.0.1:`+a.port+`"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":{"code":"Unauthorized","message":"AKV10000: Request is missing a Bearer or PoP token."}}`))
		return false
	}
	return true
}

// encrypt is keys/{name}[/{version}]/encrypt with RSA-OAEP-256.
func (a *Azure) encrypt(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(w, r) {
		return
	}
	name, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/keys/"), "/")
	var body struct {
		Alg   string `json:"alg"`
		Value string `json:"value"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body); err != nil || body.Alg != "RSA-OAEP-256" {
		http.Error(w, `{"error":{"code":"BadParameter"}}`, http.StatusBadRequest)
		return
	}
	plain, err := base64.RawURLEncoding.DecodeString(body.Value)
	if err != nil {
		http.Error(w, `{"error":{"code":"BadParameter"}}`, http.StatusBadRequest)
		return
	}
	ct, err := a.Wrap(name, plain)
	if err != nil {
		http.Error(w, `{"error":{"code":"InternalError"}}`, http.StatusInternalServerError)
		return
	}
	writeJSON(w, map[string]any{"kid": a.URL + "/keys/" + name + "/" + KeyVersion, "value": ct})
}

func (a *Azure) decrypt(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(w, r) {
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/keys/"), "/")
	var body struct {
		Alg   string `json:"alg"`
		Value string `json:"value"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body); err != nil || body.Alg != "RSA-OAEP-256" || len(parts) < 2 {
		http.Error(w, `{"error":{"code":"BadParameter"}}`, http.StatusBadRequest)
		return
	}
	ct, err := base64.RawURLEncoding.DecodeString(body.Value)
	var plain []byte
	if err == nil {
		plain, err = rsa.DecryptOAEP(sha256.New(), rand.Reader, a.key(parts[0]), ct, nil)
	}
	if err != nil {
		http.Error(w, `{"error":{"code":"BadParameter","message":"decryption failed"}}`, http.StatusBadRequest)
		return
	}
	a.Decrypts.Add(1)
	writeJSON(w, map[string]any{"kid": a.URL + "/keys/" + parts[0] + "/" + parts[1], "value": base64.RawURLEncoding.EncodeToString(plain)})
}
