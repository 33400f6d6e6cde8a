package certs

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestServingCertificateVerifiesAgainstCA(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("test CA", now, time.Hour)
	require.NoError(t, err)
	cert, key, err := ca.Issue([]string{"127.0.0.1", "sops-webhook.sops-webhook.svc"}, now, time.Hour)
	require.NoError(t, err)
	b := &Bundle{CACert: ca.CertPEM, Cert: cert, Key: key}
	dir := t.TempDir()
	require.NoError(t, b.WriteDir(dir))
	pair, err := tls.LoadX509KeyPair(dir+"/tls.crt", dir+"/tls.key")
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(b.CACert))
	for _, name := range []string{"127.0.0.1", "sops-webhook.sops-webhook.svc"} {
		_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name})
		require.NoError(t, err, name)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.example"})
	require.Error(t, err)
}
