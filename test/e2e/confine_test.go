package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// confinedIdentity applies the self-managed overlay's RBAC and its
// ValidatingAdmissionPolicy, then acts as the webhook's service account
// (impersonated, as kubectl --as does): it may create and update its TLS
// Secret and its CA ConfigMap, and no other Secret or ConfigMap of its
// namespace, which its RBAC alone would allow it to create; it may read the
// webhook configuration and change nothing of it, its caBundle included.
// The caBundle controller's account may update the caBundle, and may not
// read the TLS Secret.
func (s *deploySuite) confinedIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	for _, f := range []string{"manifests/base/serviceaccount.yaml", "manifests/base/rbac.yaml", "manifests/overlays/self-managed/rbac.yaml", "manifests/base/confine.yaml"} {
		s.kubectl(t, nil, "apply", "-f", filepath.Join(root, f))
	}
	defer s.kubectl(t, nil, "delete", "-f", filepath.Join(root, "manifests/base/confine.yaml"))

	impersonate := func(sa string) client.Client {
		cfg := rest.CopyConfig(s.cp.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:sops-webhook:" + sa,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:sops-webhook", "system:authenticated"}}
		c, err := client.New(cfg, client.Options{})
		require.NoError(t, err)
		return c
	}
	as, controller := impersonate("sops-webhook"), impersonate("sops-webhook-cabundle")
	refusedByPolicy := func(err error) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "sops-webhook-confine")
	}
	planted := func(ns string) error {
		return as.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "planted"}})
	}
	// The policy takes effect asynchronously: wait until it refuses.
	var last error
	require.Eventually(t, func() bool { last = planted("sops-webhook"); return refusedByPolicy(last) },
		time.Minute, 200*time.Millisecond, "another Secret of its namespace was not refused: %v", last)

	tls := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "sops-webhook", Name: "sops-webhook-tls"}}
	if err := s.c.Get(ctx, client.ObjectKeyFromObject(tls), tls); apierrors.IsNotFound(err) {
		require.NoError(t, as.Create(ctx, tls), "its own Secret may be created")
		require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(tls), tls))
	}
	tls.Annotations = map[string]string{"touched": "yes"}
	assert.NoError(t, as.Update(ctx, tls), "its own Secret may be updated")
	assert.True(t, apierrors.IsForbidden(as.Delete(ctx, tls)), "its own Secret may not be deleted")
	assert.True(t, apierrors.IsForbidden(planted("apps")), "a Secret of another namespace is beyond its RBAC")

	t.Run("its CA ConfigMap, and no other", func(t *testing.T) {
		published := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "sops-webhook", Name: "sops-webhook-ca"}, Data: map[string]string{"ca.crt": "x"}}
		_ = s.c.Delete(ctx, published.DeepCopy())
		require.NoError(t, as.Create(ctx, published))
		published.Data["ca.crt"] = "y"
		assert.NoError(t, as.Update(ctx, published))
		err := as.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "sops-webhook", Name: "planted"}})
		assert.True(t, refusedByPolicy(err), "another ConfigMap: %v", err)
	})

	t.Run("the webhook configuration: read only; the caBundle controller may write it", func(t *testing.T) {
		mwc, err := testbed.LoadWebhookConfiguration("https://127.0.0.1:1/unused", nil)
		require.NoError(t, err)
		if err := s.c.Get(ctx, client.ObjectKeyFromObject(mwc), mwc.DeepCopy()); apierrors.IsNotFound(err) {
			require.NoError(t, s.c.Create(ctx, mwc.DeepCopy()))
		}
		require.NoError(t, as.Get(ctx, client.ObjectKeyFromObject(mwc), mwc), "it reads the configuration")
		original := mwc.DeepCopy()
		changes := map[string]func(w *admissionregistrationv1.MutatingWebhook){
			"caBundle":          func(w *admissionregistrationv1.MutatingWebhook) { w.ClientConfig.CABundle = []byte("x") },
			"rules":             func(w *admissionregistrationv1.MutatingWebhook) { w.Rules[0].Resources = []string{"*"} },
			"namespaceSelector": func(w *admissionregistrationv1.MutatingWebhook) { w.NamespaceSelector = &metav1.LabelSelector{} },
			"objectSelector":    func(w *admissionregistrationv1.MutatingWebhook) { w.ObjectSelector = &metav1.LabelSelector{} },
			"matchConditions":   func(w *admissionregistrationv1.MutatingWebhook) { w.MatchConditions = nil },
			"failurePolicy": func(w *admissionregistrationv1.MutatingWebhook) {
				p := admissionregistrationv1.Ignore
				w.FailurePolicy = &p
			},
			"clientConfig": func(w *admissionregistrationv1.MutatingWebhook) {
				u := "https://attacker.invalid/"
				w.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &u}
			},
		}
		for field, change := range changes {
			changed := mwc.DeepCopy()
			change(&changed.Webhooks[0])
			assert.True(t, apierrors.IsForbidden(as.Update(ctx, changed)), "the webhook's own account changed %s", field)
		}
		other := mwc.DeepCopy()
		other.ObjectMeta = metav1.ObjectMeta{Name: "another"}
		assert.True(t, apierrors.IsForbidden(as.Create(ctx, other)), "it creates another webhook configuration")

		bundle := mwc.DeepCopy()
		bundle.Webhooks[0].ClientConfig.CABundle = []byte("not a CA")
		assert.NoError(t, controller.Update(ctx, bundle), "the caBundle controller updates the caBundle")
		require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(mwc), mwc))
		mwc.Webhooks = original.Webhooks
		require.NoError(t, s.c.Update(ctx, mwc))
		assert.True(t, apierrors.IsForbidden(controller.Get(ctx, client.ObjectKeyFromObject(tls), &corev1.Secret{})), "the controller reads the TLS Secret")
		assert.NoError(t, controller.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: "sops-webhook-ca"}, &corev1.ConfigMap{}))
	})
}
