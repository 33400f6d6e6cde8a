package selfcerts

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sops-webhook/sops-webhook/certs"
)

// KeyCABundle is the key of the published ConfigMap (Options.PublishTo)
// that holds the trusted CAs, PEM; its AnnotationRevokedCAs lists the
// revoked ones. It holds no private key.
const KeyCABundle = "ca.crt"

// publish writes the trusted CAs and the revoked fingerprints to the
// ConfigMap PublishTo when they differ from what it holds.
func (m *Manager) publish(ctx context.Context, trusted []*x509.Certificate, revoked string) error {
	cms := m.o.Client.CoreV1().ConfigMaps(m.o.Namespace)
	want := encodeCerts(trusted)
	cm, err := cms.Get(ctx, m.o.PublishTo, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: m.o.PublishTo, Namespace: m.o.Namespace,
			Annotations: map[string]string{AnnotationRevokedCAs: revoked}}, Data: map[string]string{KeyCABundle: string(want)}}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("publish the CAs in ConfigMap %s/%s: %w", m.o.Namespace, m.o.PublishTo, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get ConfigMap %s/%s: %w", m.o.Namespace, m.o.PublishTo, err)
	}
	if cm.Data[KeyCABundle] == string(want) && cm.Annotations[AnnotationRevokedCAs] == revoked {
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	if cm.Annotations == nil {
		cm.Annotations = map[string]string{}
	}
	cm.Data[KeyCABundle], cm.Annotations[AnnotationRevokedCAs] = string(want), revoked
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("publish the CAs in ConfigMap %s/%s: %w", m.o.Namespace, m.o.PublishTo, err)
	}
	m.o.Log.Info("trusted CAs published", "configMap", m.o.PublishTo)
	return nil
}

// caBundleTrusts returns an error until every webhook of the configuration
// trusts ca: no certificate from ca is issued before that.
func (m *Manager) caBundleTrusts(ctx context.Context, ca *x509.Certificate) error {
	mwc, err := m.o.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, m.o.WebhookConfiguration, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get MutatingWebhookConfiguration %s: %w", m.o.WebhookConfiguration, err)
	}
	for _, w := range mwc.Webhooks {
		if !slices.ContainsFunc(certs.ParseCertificates(w.ClientConfig.CABundle), ca.Equal) {
			return fmt.Errorf("waiting for the caBundle of %s to trust the CA published in ConfigMap %s (the caBundle controller copies it)", m.o.WebhookConfiguration, m.o.PublishTo)
		}
	}
	return nil
}

// CABundleController copies the CAs a Manager published (Options.PublishTo)
// into the webhook configuration's caBundle. It runs under an identity of
// its own, the only one that may write the configuration, and never reads
// the TLS Secret or a private key.
type CABundleController struct {
	m *Manager
}

// CABundleOptions configure a CABundleController.
type CABundleOptions struct {
	Client kubernetes.Interface
	// Namespace and ConfigMap name what the Managers publish.
	Namespace, ConfigMap string
	WebhookConfiguration string
	KeepForeignCAs       bool
	Interval             time.Duration
	Log                  logr.Logger
	Now                  func() time.Time
}

// NewCABundleController returns a controller, or an error naming a missing
// option.
func NewCABundleController(o CABundleOptions) (*CABundleController, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("no Kubernetes client"))
	}
	for name, v := range map[string]string{"namespace": o.Namespace, "ConfigMap": o.ConfigMap, "webhook configuration": o.WebhookConfiguration} {
		if v == "" {
			errs = append(errs, fmt.Errorf("no %s", name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("caBundle controller: %w", err)
	}
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &CABundleController{m: &Manager{o: Options{
		Client: o.Client, Namespace: o.Namespace, PublishTo: o.ConfigMap, WebhookConfiguration: o.WebhookConfiguration,
		KeepForeignCAs: o.KeepForeignCAs, Interval: o.Interval, Log: o.Log, Now: o.Now,
	}}}, nil
}

// Reconcile makes one pass: the published CAs, less the revoked ones,
// become the caBundle (with the webhook's own CAs it already holds, as
// Manager.Reconcile keeps them). Nothing published yet is not an error.
func (c *CABundleController) Reconcile(ctx context.Context) error {
	o := c.m.o
	cm, err := o.Client.CoreV1().ConfigMaps(o.Namespace).Get(ctx, o.PublishTo, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("get ConfigMap %s/%s: %w", o.Namespace, o.PublishTo, err)
	}
	trusted := certs.ParseCertificates(bytes.TrimSpace([]byte(cm.Data[KeyCABundle])))
	if len(trusted) == 0 {
		return fmt.Errorf("ConfigMap %s/%s holds no CA in %s", o.Namespace, o.PublishTo, KeyCABundle)
	}
	return c.m.ensureCABundle(ctx, trusted, strings.Split(cm.Annotations[AnnotationRevokedCAs], ","), o.Now())
}

// Run reconciles every Interval until ctx ends, logging errors.
func (c *CABundleController) Run(ctx context.Context) error {
	t := time.NewTicker(c.m.o.Interval)
	defer t.Stop()
	for {
		if err := c.Reconcile(ctx); err != nil {
			c.m.o.Log.Error(err, "caBundle check failed; retrying")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
