package standin

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	jose "github.com/go-jose/go-jose/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// GCP is a stand-in for Google Cloud (which cannot run here): the
// Security Token Service's token exchange, as workload identity federation
// uses it (HTTPS), and Cloud KMS's gRPC API (Encrypt, Decrypt), both on
// loopback TLS. The subject token is a JWT verified for real against a
// JWKS (the test API server's OIDC keys), with its issuer, the provider's
// audience and the trusted subject; KMS calls need an access token this
// STS issued.
type GCP struct {
	// TokenURL is the STS token endpoint; KMSEndpoint the gRPC host:port;
	// CAFile the CA both chain to.
	TokenURL, KMSEndpoint, CAFile string
	// Audience is the workload identity provider, as in a credential
	// configuration file; JWTAudience what the subject token must carry.
	Audience, JWTAudience string
	// Exchanges and Decrypts count successful calls.
	Exchanges, Decrypts atomic.Int64

	jwks    func(ctx context.Context) (*jose.JSONWebKeySet, error)
	issuer  string
	subject string
	hang    atomic.Bool
	https   *http.Server
	grpc    *grpc.Server

	keys   aeadKeys
	mu     sync.Mutex
	tokens map[string]time.Time

	kmspb.UnimplementedKeyManagementServiceServer
}

// GCPOptions configure StartGCP.
type GCPOptions struct {
	JWKS   func(ctx context.Context) (*jose.JSONWebKeySet, error)
	Issuer string
	// Subject is the only JWT subject the provider trusts.
	Subject string
}

// StartGCP starts STS (HTTPS) and KMS (gRPC) with one CA, written to
// dir.
func StartGCP(dir string, o GCPOptions) (*GCP, error) {
	b, err := testpki.NewTLS([]string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(b.Cert, b.Key)
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "gcp-ca.crt")
	if err := os.WriteFile(caFile, b.CACert, 0o644); err != nil {
		return nil, err
	}
	stsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	kmsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	provider := "projects/123456/locations/global/workloadIdentityPools/k8s/providers/test"
	g := &GCP{
		TokenURL: "https://" + stsLn.Addr().String() + "/v1/token", KMSEndpoint: kmsLn.Addr().String(), CAFile: caFile,
		Audience: "//iam.googleapis.com/" + provider, JWTAudience: "https://iam.googleapis.com/" + provider,
		jwks: o.JWKS, issuer: o.Issuer, subject: o.Subject,
		tokens: map[string]time.Time{},
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	g.https = &http.Server{Handler: http.HandlerFunc(g.exchange), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = g.https.Serve(tls.NewListener(stsLn, tlsConfig)) }()
	g.grpc = grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConfig)))
	kmspb.RegisterKeyManagementServiceServer(g.grpc, g)
	go func() { _ = g.grpc.Serve(kmsLn) }()
	return g, nil
}

// Close stops both servers.
func (g *GCP) Close() error {
	g.grpc.Stop()
	return g.https.Close()
}

// SetHanging makes KMS calls hang until the client gives up, or answer again.
func (g *GCP) SetHanging(on bool) { g.hang.Store(on) }

// AdminToken returns an access token for encrypting test payloads.
func (g *GCP) AdminToken() string { return g.issue() }

func (g *GCP) issue() string {
	tok := "ya29." + randomHex(24)
	g.mu.Lock()
	g.tokens[tok] = time.Now().Add(time.Hour)
	g.mu.Unlock()
	return tok
}

// exchange is STS's POST /v1/token (RFC 8693 token exchange).
func (g *GCP) exchange(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/token" {
		http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
		return
	}
	f := r.PostForm
	if f.Get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" || f.Get("audience") != g.Audience {
		http.Error(w, `{"error":"invalid_target"}`, http.StatusBadRequest)
		return
	}
	sub, err := g.verify(r.Context(), f.Get("subject_token"))
	if err != nil || sub != g.subject {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"The token is not valid for this provider."}`))
		return
	}
	g.Exchanges.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": g.issue(), "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
		"token_type": "Bearer", "expires_in": 3600,
	})
}

func (g *GCP) verify(ctx context.Context, raw string) (string, error) {
	return verifyJWT(ctx, g.jwks, raw, g.issuer, g.JWTAudience)
}

func (g *GCP) authorize(ctx context.Context) error {
	if g.hang.Load() {
		<-ctx.Done()
		return status.Error(codes.DeadlineExceeded, "hung")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		tok, ok := strings.CutPrefix(v, "Bearer ")
		g.mu.Lock()
		exp, known := g.tokens[tok]
		g.mu.Unlock()
		if ok && known && time.Now().Before(exp) {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "request had invalid authentication credentials")
}

func (g *GCP) aead(name string) cipher.AEAD { return g.keys.get(name) }

// Encrypt implements Cloud KMS Encrypt.
func (g *GCP) Encrypt(ctx context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	if err := g.authorize(ctx); err != nil {
		return nil, err
	}
	a := g.aead(req.Name)
	nonce := make([]byte, a.NonceSize())
	_, _ = rand.Read(nonce)
	return &kmspb.EncryptResponse{Name: req.Name, Ciphertext: a.Seal(nonce, nonce, req.Plaintext, []byte(req.Name))}, nil
}

// Decrypt implements Cloud KMS Decrypt.
func (g *GCP) Decrypt(ctx context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	if err := g.authorize(ctx); err != nil {
		return nil, err
	}
	a := g.aead(req.Name)
	if len(req.Ciphertext) < a.NonceSize() {
		return nil, status.Error(codes.InvalidArgument, "invalid ciphertext")
	}
	plain, err := a.Open(nil, req.Ciphertext[:a.NonceSize()], req.Ciphertext[a.NonceSize():], []byte(req.Name))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, errors.New("decryption failed").Error())
	}
	g.Decrypts.Add(1)
	return &kmspb.DecryptResponse{Plaintext: plain}, nil
}

// CredentialConfig writes a workload identity federation credential
// configuration file (what GOOGLE_APPLICATION_CREDENTIALS names) whose
// subject token is read from tokenFile, and returns its path.
func (g *GCP) CredentialConfig(dir, tokenFile string) (string, error) {
	cfg, err := json.Marshal(map[string]any{
		"type": "external_account", "audience": g.Audience,
		"subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_url": g.TokenURL,
		"credential_source": map[string]any{"file": tokenFile},
	})
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "gcp-credentials.json")
	return p, os.WriteFile(p, cfg, 0o600)
}
