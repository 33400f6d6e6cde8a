package standin

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// Shared parts of the cloud and Vault stand-ins.

// tlsEndpoint is a loopback listener with a certificate from a fresh CA,
// whose PEM is written to a file for the clients under test.
type tlsEndpoint struct {
	ln     net.Listener
	config *tls.Config
	// url is https://127.0.0.1:PORT; caFile the CA's PEM file.
	url, caFile string
}

// newTLSEndpoint listens on a free loopback port and writes the CA to
// dir/name-ca.crt.
func newTLSEndpoint(dir, name string) (*tlsEndpoint, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b, err := testpki.NewTLS([]string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(b.Cert, b.Key)
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, name+"-ca.crt")
	if err := os.WriteFile(caFile, b.CACert, 0o644); err != nil {
		return nil, err
	}
	return &tlsEndpoint{
		ln: ln, config: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		url: "https://" + ln.Addr().String(), caFile: caFile,
	}, nil
}

// serve serves h over TLS on the endpoint until the returned server closes.
func (e *tlsEndpoint) serve(h http.Handler) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(tls.NewListener(e.ln, e.config)) }()
	return srv
}

// aeadKeys holds one random AES-256-GCM key per name, made on first use.
type aeadKeys struct {
	mu   sync.Mutex
	keys map[string][]byte
}

func (k *aeadKeys) get(name string) cipher.AEAD {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys == nil {
		k.keys = map[string][]byte{}
	}
	key, ok := k.keys[name]
	if !ok {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
		k.keys[name] = key
	}
	block, _ := aes.NewCipher(key)
	a, _ := cipher.NewGCM(block)
	return a
}

// verifyJWT checks a service-account token's signature against the JWKS,
// its issuer, audience and expiry, as a cloud identity provider federating
// the cluster does, and returns its subject.
func verifyJWT(ctx context.Context, jwks func(context.Context) (*jose.JSONWebKeySet, error), raw, issuer, audience string) (string, error) {
	tok, err := josejwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err != nil {
		return "", err
	}
	keys, err := jwks(ctx)
	if err != nil {
		return "", err
	}
	var claims josejwt.Claims
	if err := tok.Claims(keys, &claims); err != nil {
		return "", err
	}
	if err := claims.Validate(josejwt.Expected{Issuer: issuer, AnyAudience: []string{audience}, Time: time.Now()}); err != nil {
		return "", err
	}
	return claims.Subject, nil
}

// hang blocks until the request is abandoned (or a minute passes): a
// service that accepts connections but never answers.
func hang(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(time.Minute):
	}
}
