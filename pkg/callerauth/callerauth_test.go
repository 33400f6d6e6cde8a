package callerauth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/certs"
)

// pki is a CA with the client certificates the tests present.
type pki struct {
	ca *certs.CA
}

func newPKI(t *testing.T, name string) pki {
	ca, err := certs.NewCA(name, time.Now(), time.Hour)
	require.NoError(t, err)
	return pki{ca: ca}
}

func (p pki) client(t *testing.T, name string) *tls.Certificate {
	c, k, err := p.ca.IssueClient(name, time.Now(), time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(c, k)
	require.NoError(t, err)
	return &pair
}

func (p pki) serving(t *testing.T) *tls.Certificate {
	c, k, err := p.ca.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(c, k)
	require.NoError(t, err)
	return &pair
}

// serveOnce starts a TLS listener configured by v that answers "ok" to the
// first line of each connection, and returns its address.
func serveOnce(t *testing.T, v *Verifier, serving *tls.Certificate) string {
	cfg := &tls.Config{Certificates: []tls.Certificate{*serving}, MinVersion: tls.VersionTLS12}
	v.Configure(cfg)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 5)
				if _, err := io.ReadFull(c, buf); err == nil {
					_, _ = c.Write([]byte("ok"))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// ask sends a request on a fresh connection with cert (none when nil) and
// returns the answer, or the error that stopped it.
func ask(addr string, serverCA *x509.Certificate, cert *tls.Certificate, version uint16) (string, error) {
	roots := x509.NewCertPool()
	roots.AddCert(serverCA)
	cfg := &tls.Config{RootCAs: roots, MinVersion: version, MaxVersion: version}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func writeCA(t *testing.T, dir string, cas ...*certs.CA) string {
	var pemData []byte
	for _, ca := range cas {
		pemData = append(pemData, ca.CertPEM...)
	}
	f := filepath.Join(dir, "client-ca.crt")
	require.NoError(t, os.WriteFile(f, pemData, 0o600))
	return f
}

func TestVerifier(t *testing.T) {
	trusted, other := newPKI(t, "API server client CA"), newPKI(t, "another CA")
	serverPKI := newPKI(t, "serving CA")
	tests := []struct {
		name   string
		names  []string
		cert   *tls.Certificate
		reason string // "" when the caller is answered
	}{
		{"the API server's certificate", nil, trusted.client(t, "kube-apiserver"), ""},
		{"an allowed name", []string{"kube-apiserver"}, trusted.client(t, "kube-apiserver"), ""},
		{"one of several allowed names", []string{"other", "kube-apiserver"}, trusted.client(t, "kube-apiserver"), ""},
		{"no certificate", nil, nil, ReasonNoCertificate},
		{"a certificate from another CA", nil, other.client(t, "kube-apiserver"), ReasonUntrusted},
		{"a serving certificate of the trusted CA", nil, trusted.serving(t), ReasonUntrusted},
		{"a name not allowed", []string{"kube-apiserver"}, trusted.client(t, "system:admin"), ReasonNameNotAllowed},
	}
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, tt := range tests {
			t.Run(tls.VersionName(version)+"/"+tt.name, func(t *testing.T) {
				reg := prometheus.NewRegistry()
				m, err := NewMetrics(reg, ModeClientCertificate)
				require.NoError(t, err)
				v, err := New(writeCA(t, t.TempDir(), trusted.ca), tt.names, m.Refused)
				require.NoError(t, err)
				addr := serveOnce(t, v, serverPKI.serving(t))
				got, err := ask(addr, serverPKI.ca.Cert, tt.cert, version)
				for _, r := range Reasons {
					want := 0.0
					if r == tt.reason {
						want = 1
					}
					assert.Equal(t, want, testutil.ToFloat64(m.refusals.WithLabelValues(r)), r)
				}
				if tt.reason == "" {
					require.NoError(t, err)
					assert.Equal(t, "ok", got)
					return
				}
				assert.Empty(t, got, "a refused caller got an answer")
				assert.Error(t, err)
			})
		}
	}
}

func TestVerifierReload(t *testing.T) {
	first, second := newPKI(t, "first client CA"), newPKI(t, "second client CA")
	serverPKI := newPKI(t, "serving CA")
	dir := t.TempDir()
	file := writeCA(t, dir, first.ca)
	v, err := New(file, nil, nil)
	require.NoError(t, err)
	addr := serveOnce(t, v, serverPKI.serving(t))
	answered := func(p pki) bool {
		got, err := ask(addr, serverPKI.ca.Cert, p.client(t, "kube-apiserver"), tls.VersionTLS13)
		return err == nil && got == "ok"
	}
	require.True(t, answered(first))
	require.False(t, answered(second))

	changed, err := v.Reload()
	require.NoError(t, err)
	assert.False(t, changed, "an unchanged file is not a change")

	writeCA(t, dir, second.ca)
	changed, err = v.Reload()
	require.NoError(t, err)
	assert.True(t, changed)
	assert.True(t, answered(second))
	assert.False(t, answered(first), "a CA removed from the file is no longer trusted")

	for name, content := range map[string]string{
		"empty":      "",
		"not PEM":    "not a certificate",
		"only a key": "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
		"too large":  strings.Repeat("x", MaxCAFileSize+1),
	} {
		require.NoError(t, os.WriteFile(file, []byte(content), 0o600))
		_, err := v.Reload()
		assert.Error(t, err, name)
		assert.True(t, answered(second), "%s: the CAs read before stay in use", name)
	}
	_, err = New(filepath.Join(dir, "missing"), nil, nil)
	var pathErr *os.PathError
	assert.True(t, errors.As(err, &pathErr), "a missing file is named: %v", err)
}

func TestNotACA(t *testing.T) {
	p := newPKI(t, "CA")
	leaf, _, err := p.ca.IssueClient("kube-apiserver", time.Now(), time.Hour)
	require.NoError(t, err)
	f := filepath.Join(t.TempDir(), "ca.crt")
	require.NoError(t, os.WriteFile(f, leaf, 0o600))
	_, err = New(f, nil, nil)
	require.ErrorContains(t, err, "is not a CA")
}

func TestNewMetrics(t *testing.T) {
	for _, mode := range Modes {
		t.Run(mode, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			_, err := NewMetrics(reg, mode)
			require.NoError(t, err)
			want := 1.0
			if mode == ModeClientCertificate {
				want = 0
			}
			mfs, err := reg.Gather()
			require.NoError(t, err)
			i := slices.IndexFunc(mfs, func(mf *dto.MetricFamily) bool { return mf.GetName() == UnauthenticatedMetric })
			require.GreaterOrEqual(t, i, 0)
			require.Len(t, mfs[i].Metric, 1)
			assert.Equal(t, "mode", mfs[i].Metric[0].Label[0].GetName())
			assert.Equal(t, mode, mfs[i].Metric[0].Label[0].GetValue())
			assert.Equal(t, want, mfs[i].Metric[0].Gauge.GetValue())
		})
	}
	_, err := NewMetrics(prometheus.NewRegistry(), "trust-me")
	require.Error(t, err)
}

// TestDocumentedRecipe runs the openssl commands of docs/operations.md
// ("2. Who may ask") that make the client CA and the API server's
// certificate, and checks that a Verifier for names kube-apiserver admits
// that certificate: the recipe and the verifier agree.
func TestDocumentedRecipe(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("openssl is needed to check the documented recipe: %v", err)
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(doc), "**Client certificate (kubeadm and self-hosted control planes).**")
	require.True(t, ok, "the recipe's heading moved")
	_, rest, ok = strings.Cut(rest, "```sh\n")
	require.True(t, ok)
	script, _, ok := strings.Cut(rest, "```")
	require.True(t, ok)
	var lines []string
	for line := range strings.Lines(strings.ReplaceAll(script, "\\\n", "")) {
		if !strings.HasPrefix(line, "kubectl ") {
			lines = append(lines, line)
		}
	}
	dir := t.TempDir()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", strings.Join(lines, ""))
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)

	v, err := New(filepath.Join(dir, "client-ca.crt"), []string{"kube-apiserver"}, nil)
	require.NoError(t, err)
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	assert.NoError(t, v.Verify(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}))
}
