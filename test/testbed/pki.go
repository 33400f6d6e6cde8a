package testbed

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
	spec := func(cn string, isCA bool, usages ...cmapi.KeyUsage) *cmapi.Certificate {
		return &cmapi.Certificate{Spec: cmapi.CertificateSpec{
			CommonName: cn,
			Duration:   &metav1.Duration{Duration: validity},
			IsCA:       isCA,
			Usages:     usages,
			PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
		}}
	}
	caCrt := spec("sops-webhook test bed CA", true, cmapi.UsageCertSign, cmapi.UsageDigitalSignature)
	leafCrt := spec(hosts[0], false, cmapi.UsageDigitalSignature, cmapi.UsageServerAuth)
	for _, h := range hosts {
		if net.ParseIP(h) != nil {
			leafCrt.Spec.IPAddresses = append(leafCrt.Spec.IPAddresses, h)
		} else {
			leafCrt.Spec.DNSNames = append(leafCrt.Spec.DNSNames, h)
		}
	}

	caPEM, caCert, caKey, err := issue(caCrt, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	leafPEM, _, key, err := issue(leafCrt, caCert, caKey)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	keyPEM, err := pki.EncodePrivateKey(key, cmapi.PKCS8)
	if err != nil {
		return nil, err
	}
	return &certs.Bundle{CACert: caPEM, Cert: leafPEM, Key: keyPEM}, nil
}

// NewClientTLS issues a fresh self-signed CA and a client certificate it
// signs for the common name name, for client authentication only, both
// valid for validity, like NewTLS; the Bundle's Cert and Key are the client
// certificate and key.
func NewClientTLS(name string, validity time.Duration) (*certs.Bundle, error) {
	ca := &cmapi.Certificate{Spec: cmapi.CertificateSpec{
		CommonName: "sops-webhook test bed API server client CA",
		Duration:   &metav1.Duration{Duration: validity},
		IsCA:       true,
		Usages:     []cmapi.KeyUsage{cmapi.UsageCertSign, cmapi.UsageDigitalSignature},
		PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
	}}
	leaf := ca.DeepCopy()
	leaf.Spec.CommonName, leaf.Spec.IsCA = name, false
	leaf.Spec.Usages = []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageClientAuth}
	caPEM, caCert, caKey, err := issue(ca, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	leafPEM, _, key, err := issue(leaf, caCert, caKey)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	keyPEM, err := pki.EncodePrivateKey(key, cmapi.PKCS8)
	if err != nil {
		return nil, err
	}
	return &certs.Bundle{CACert: caPEM, Cert: leafPEM, Key: keyPEM}, nil
}

// issue makes a key and a certificate for crt, signed by parent and
// parentKey, or self-signed when parent is nil.
func issue(crt *cmapi.Certificate, parent *x509.Certificate, parentKey crypto.Signer) ([]byte, *x509.Certificate, crypto.Signer, error) {
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
