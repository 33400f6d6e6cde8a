package testbed

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNewTLSVerifiesForItsHostsOnly(t *testing.T) {
	b, err := NewTLS([]string{"127.0.0.1", "localhost"}, time.Hour)
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, b.WriteDir(dir))
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(b.CACert))
	for _, h := range []string{"127.0.0.1", "localhost"} {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: h})
		require.NoError(t, err, h)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.example"})
	require.Error(t, err)
	require.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, leaf.ExtKeyUsage)
}

func TestAPIServerClient(t *testing.T) {
	c, err := LoadAPIServerClient()
	require.NoError(t, err)
	again, err := LoadAPIServerClient()
	require.NoError(t, err)
	require.Same(t, c, again, "one identity per test process")
	leaf, err := x509.ParseCertificate(c.Certificate.Certificate[0])
	require.NoError(t, err)
	require.Equal(t, APIServerClientName, leaf.Subject.CommonName)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(c.CAPEM))
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	require.Error(t, err)
	raw, err := os.ReadFile(c.AdmissionConfig)
	require.NoError(t, err)
	require.Contains(t, string(raw), "kubeConfigFile: "+filepath.Join(filepath.Dir(c.CAFile), "webhook-kubeconfig.yaml"))
	require.Contains(t, string(raw), "MutatingAdmissionWebhook")
}
