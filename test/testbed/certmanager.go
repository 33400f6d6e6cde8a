package testbed

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// cainjectorAnnotation names, on a webhook configuration, the Certificate
// whose CA goes into its caBundle.
const cainjectorAnnotation = "cert-manager.io/inject-ca-from"

// CertManagerStandIn plays cert-manager for the test bed, whose controller
// cannot be built here (its cmd modules are not on the module proxy). Like
// cert-manager's controller, it issues each Certificate whose Secret is
// missing, with cert-manager's PKI library, for a SelfSigned or CA Issuer
// (the only kinds it knows; others are an error). Like cainjector, it copies the
// CA of the Certificate a MutatingWebhookConfiguration names in
// cert-manager.io/inject-ca-from into its webhooks' caBundle.
type CertManagerStandIn struct {
	c client.Client
}

// NewCertManagerStandIn connects to the API server of cfg, which must serve
// cert-manager's CRDs.
func NewCertManagerStandIn(cfg *rest.Config) (*CertManagerStandIn, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := cmapi.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	return &CertManagerStandIn{c: c}, nil
}

// Run reconciles every half second until ctx ends, and returns the last
// reconcile error, if any.
func (s *CertManagerStandIn) Run(ctx context.Context) error {
	var last error
	for {
		last = s.Reconcile(ctx)
		select {
		case <-ctx.Done():
			return last
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Reconcile issues the missing Secrets and injects the CA bundles once.
func (s *CertManagerStandIn) Reconcile(ctx context.Context) error {
	var crts cmapi.CertificateList
	if err := s.c.List(ctx, &crts); err != nil {
		return err
	}
	var errs []error
	for i := range crts.Items {
		errs = append(errs, s.issue(ctx, &crts.Items[i]))
	}
	var mwcs admissionregistrationv1.MutatingWebhookConfigurationList
	if err := s.c.List(ctx, &mwcs); err != nil {
		return err
	}
	for i := range mwcs.Items {
		errs = append(errs, s.inject(ctx, &mwcs.Items[i]))
	}
	return errors.Join(errs...)
}

func (s *CertManagerStandIn) issue(ctx context.Context, crt *cmapi.Certificate) error {
	key := client.ObjectKey{Namespace: crt.Namespace, Name: crt.Spec.SecretName}
	if err := s.c.Get(ctx, key, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		return err
	}
	if kind := crt.Spec.IssuerRef.Kind; kind != "" && kind != cmapi.IssuerKind {
		return fmt.Errorf("certificate %s/%s: the stand-in issues for Issuers only, not %s", crt.Namespace, crt.Name, kind)
	}
	var issuer cmapi.Issuer
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: crt.Namespace, Name: crt.Spec.IssuerRef.Name}, &issuer); err != nil {
		return fmt.Errorf("certificate %s/%s: %w", crt.Namespace, crt.Name, err)
	}
	// A SelfSigned issuer signs the certificate with its own key, and
	// ca.crt is the certificate itself; a CA issuer signs with the CA of
	// its Secret, which is ca.crt.
	var (
		parent    *x509.Certificate
		parentKey crypto.Signer
		caPEM     []byte
	)
	switch {
	case issuer.Spec.SelfSigned != nil:
	case issuer.Spec.CA != nil:
		var caSec corev1.Secret
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: issuer.Namespace, Name: issuer.Spec.CA.SecretName}, &caSec); err != nil {
			return fmt.Errorf("issuer %s/%s: its CA: %w", issuer.Namespace, issuer.Name, err)
		}
		var err error
		if parentKey, err = pki.DecodePrivateKeyBytes(caSec.Data[corev1.TLSPrivateKeyKey]); err != nil {
			return fmt.Errorf("issuer %s/%s: its CA key: %w", issuer.Namespace, issuer.Name, err)
		}
		if parent, err = pki.DecodeX509CertificateBytes(caSec.Data[corev1.TLSCertKey]); err != nil {
			return fmt.Errorf("issuer %s/%s: its CA: %w", issuer.Namespace, issuer.Name, err)
		}
		caPEM = caSec.Data[corev1.TLSCertKey]
	default:
		return fmt.Errorf("issuer %s/%s: the stand-in issues for SelfSigned and CA issuers only", issuer.Namespace, issuer.Name)
	}
	certPEM, _, priv, err := testpki.Issue(crt, parent, parentKey)
	if err != nil {
		return fmt.Errorf("certificate %s/%s: %w", crt.Namespace, crt.Name, err)
	}
	if caPEM == nil {
		caPEM = certPEM
	}
	var encoding cmapi.PrivateKeyEncoding
	if crt.Spec.PrivateKey != nil {
		encoding = crt.Spec.PrivateKey.Encoding
	}
	keyPEM, err := pki.EncodePrivateKey(priv, encoding)
	if err != nil {
		return err
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name, Annotations: map[string]string{
			cmapi.CertificateNameKey: crt.Name, cmapi.IssuerNameAnnotationKey: issuer.Name, cmapi.IssuerKindAnnotationKey: cmapi.IssuerKind,
		}},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM, "ca.crt": caPEM},
	}
	return s.c.Create(ctx, sec)
}

func (s *CertManagerStandIn) inject(ctx context.Context, mwc *admissionregistrationv1.MutatingWebhookConfiguration) error {
	from, ok := mwc.Annotations[cainjectorAnnotation]
	if !ok {
		return nil
	}
	ns, name, ok := strings.Cut(from, "/")
	if !ok {
		return fmt.Errorf("%s: %s is not namespace/name: %q", mwc.Name, cainjectorAnnotation, from)
	}
	var crt cmapi.Certificate
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &crt); err != nil {
		return client.IgnoreNotFound(err)
	}
	var sec corev1.Secret
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: crt.Spec.SecretName}, &sec); err != nil {
		return client.IgnoreNotFound(err)
	}
	ca := sec.Data["ca.crt"]
	changed := false
	for i := range mwc.Webhooks {
		if string(mwc.Webhooks[i].ClientConfig.CABundle) != string(ca) {
			mwc.Webhooks[i].ClientConfig.CABundle = ca
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return client.IgnoreNotFound(s.c.Update(ctx, mwc))
}
