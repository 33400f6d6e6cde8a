package testpki

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"net"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sops-webhook/sops-webhook/certs"
)

// NewTLS issues a fresh self-signed ECDSA P-256 CA and a serving certificate
// it signs for hosts (DNS names or IP addresses), both valid for validity,
// the way cert-manager's CA issuer does: each from a Certificate spec,
// through cert-manager's PKI library (github.com/cert-manager/cert-manager/
// pkg/util/pki). The test bed's servers, the webhook under test and the
// stand-ins serve these; Bundle.WriteDir writes them as --cert-dir expects.
func NewTLS(hosts []string, validity time.Duration) (*certs.Bundle, error) {
	leaf := certSpec(hosts[0], validity, false, cmapi.UsageDigitalSignature, cmapi.UsageServerAuth)
	for _, h := range hosts {
		if net.ParseIP(h) != nil {
			leaf.Spec.IPAddresses = append(leaf.Spec.IPAddresses, h)
		} else {
			leaf.Spec.DNSNames = append(leaf.Spec.DNSNames, h)
		}
	}
	return issueBundle(certSpec("sops-webhook test bed CA", validity, true, cmapi.UsageCertSign, cmapi.UsageDigitalSignature), leaf)
}

// NewClientTLS issues a fresh self-signed CA and a client certificate it
// signs for the common name name, for client authentication only, both
// valid for validity, like NewTLS; the Bundle's Cert and Key are the client
// certificate and key.
func NewClientTLS(name string, validity time.Duration) (*certs.Bundle, error) {
	return issueBundle(certSpec("sops-webhook test bed API server client CA", validity, true, cmapi.UsageCertSign, cmapi.UsageDigitalSignature),
		certSpec(name, validity, false, cmapi.UsageDigitalSignature, cmapi.UsageClientAuth))
}

// certSpec is a Certificate for an ECDSA P-256 key.
func certSpec(cn string, validity time.Duration, isCA bool, usages ...cmapi.KeyUsage) *cmapi.Certificate {
	return &cmapi.Certificate{Spec: cmapi.CertificateSpec{
		CommonName: cn,
		Duration:   &metav1.Duration{Duration: validity},
		IsCA:       isCA,
		Usages:     usages,
		PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
	}}
}

// issueBundle issues the self-signed CA of caCrt and the certificate of
// leafCrt it signs.
func issueBundle(caCrt, leafCrt *cmapi.Certificate) (*certs.Bundle, error) {
	caPEM, caCert, caKey, err := Issue(caCrt, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	leafPEM, _, key, err := Issue(leafCrt, caCert, caKey)
	if err != nil {
		return nil, fmt.Errorf("certificate for %q: %w", leafCrt.Spec.CommonName, err)
	}
	keyPEM, err := pki.EncodePrivateKey(key, cmapi.PKCS8)
	if err != nil {
		return nil, err
	}
	return &certs.Bundle{CACert: caPEM, Cert: leafPEM, Key: keyPEM}, nil
}

// Issue makes a key and a certificate for crt, signed by parent and
// parentKey, or self-signed when parent is nil.
func Issue(crt *cmapi.Certificate, parent *x509.Certificate, parentKey crypto.Signer) ([]byte, *x509.Certificate, crypto.Signer, error) {
	key, err := pki.GeneratePrivateKeyForCertificate(crt)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("key: %w", err)
	}
	template, err := pki.CertificateTemplateFromCertificate(crt)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("template: %w", err)
	}
	if parent == nil {
		parent, parentKey = template, key
	}
	certPEM, cert, err := pki.SignCertificate(template, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, nil, err
	}
	return certPEM, cert, key, nil
}
