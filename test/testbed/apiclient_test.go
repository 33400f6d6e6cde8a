package testbed

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

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
