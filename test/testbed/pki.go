package testbed

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/sops-webhook/sops-webhook/certs"
)

// NewTLS issues a fresh ECDSA P-256 CA and a serving certificate for hosts
// (DNS names or IP addresses), both valid from a minute ago for validity,
// with cert-manager's PKI library (github.com/cert-manager/cert-manager/
// pkg/util/pki): the test bed's servers, the webhook under test and the
// stand-ins serve these. Bundle.WriteDir writes them as --cert-dir expects.
func NewTLS(hosts []string, validity time.Duration) (*certs.Bundle, error) {
	notBefore := time.Now().Add(-time.Minute)
	caKey, err := pki.GenerateECPrivateKey(pki.ECCurve256)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	caTemplate := &x509.Certificate{
		SerialNumber:          serialNumber(),
		Subject:               pkix.Name{CommonName: "sops-webhook test bed CA"},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caPEM, caCert, err := pki.SignCertificate(caTemplate, caTemplate, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := pki.GenerateECPrivateKey(pki.ECCurve256)
	if err != nil {
		return nil, fmt.Errorf("serving key: %w", err)
	}
	leaf := &x509.Certificate{
		SerialNumber: serialNumber(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, h)
		}
	}
	certPEM, _, err := pki.SignCertificate(leaf, caCert, key.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	keyPEM, err := pki.EncodeECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &certs.Bundle{CACert: caPEM, Cert: certPEM, Key: keyPEM}, nil
}

func serialNumber() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}
