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

func TestClientCertificateIsForClientAuthOnly(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("test CA", now, time.Hour)
	require.NoError(t, err)
	certPEM, keyPEM, err := ca.IssueClient("kube-apiserver", now, 2*time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	require.Equal(t, "kube-apiserver", leaf.Subject.CommonName)
	require.Equal(t, ca.Cert.NotAfter, leaf.NotAfter, "never valid past its CA")
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	require.Error(t, err, "a client certificate must not serve")
	_, _, err = ca.IssueClient("", now, time.Hour)
	require.Error(t, err)
}
