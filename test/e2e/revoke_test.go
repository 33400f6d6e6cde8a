package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/certs"
	"github.com/sops-webhook/sops-webhook/pkg/selfcerts"
	"github.com/sops-webhook/sops-webhook/test/testbed"
)

// impostor is an admission webhook serving a certificate that someone
// holding an exposed CA key minted: it allows every request and counts
// what reached it.
type impostor struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func startImpostor(t *testing.T, exposed *certs.CA) *impostor {
	t.Helper()
	certPEM, keyPEM, err := exposed.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	im := &impostor{}
	im.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		im.hits.Add(1)
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
			http.Error(w, "not a review", http.StatusBadRequest)
			return
		}
		review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
		review.Request = nil
		_ = json.NewEncoder(w).Encode(review)
	}))
	im.srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	im.srv.StartTLS()
	t.Cleanup(im.srv.Close)
	return im
}

// register points a webhook configuration "impostor" at im for Secrets in
// namespaces labelled impostor=true, trusting caBundle, as an attacker who
// can redirect the webhook's traffic would be trusted by the API server.
func (im *impostor) register(t *testing.T, c client.Client, caBundle []byte) {
	t.Helper()
	ctx := context.Background()
	want, err := testbed.LoadWebhookConfiguration(im.srv.URL+"/mutate", caBundle)
	require.NoError(t, err)
	want.Name = "impostor"
	for i := range want.Webhooks {
		want.Webhooks[i].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"impostor": "true"}}
		want.Webhooks[i].MatchConditions = nil
	}
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		live := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := c.Get(ctx, client.ObjectKey{Name: want.Name}, live); err != nil {
			return c.Create(ctx, want.DeepCopy())
		}
		live.Webhooks = want.Webhooks
		return c.Update(ctx, live)
	}))
}

// revokeExposedCA asks the self-managed webhook wh, after a rotation, to
// revoke the CAs before the signing one while four writers create Secrets
// through the API server: none of their writes fails. Before, an impostor
// with a certificate of the exposed CA is trusted by the API server through
// the caBundle; after, the API server refuses it.
func (s *deploySuite) revokeExposedCA(t *testing.T, exposed *certs.CA) {
	ctx := context.Background()
	require.NoError(t, s.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "impostor-target", Labels: map[string]string{"impostor": "true"}}}))
	im := startImpostor(t, exposed)
	live, err := testbed.LoadWebhookConfiguration("https://unused", nil)
	require.NoError(t, err)
	bundle := func() []byte {
		require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(live), live))
		return live.Webhooks[0].ClientConfig.CABundle
	}
	secret := func(name string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "impostor-target"}, Data: map[string][]byte{"k": []byte("v")}}
	}
	require.Len(t, certs.ParseCertificates(bundle()), 2, "rotated: the new and the exposed CA are trusted")
	im.register(t, s.c, bundle())
	require.Eventually(t, func() bool {
		_ = s.c.Create(ctx, secret("before"))
		return im.hits.Load() > 0
	}, 20*time.Second, 200*time.Millisecond, "the API server never called the impostor")

	st := startStream(s.c, "apps", "revocation", s.doc, 4)
	time.Sleep(time.Second)
	value := time.Now().UTC().Format(time.RFC3339Nano)
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sec := s.tlsSecret(t)
		sec.Annotations[selfcerts.AnnotationRevoke] = value
		return s.c.Update(ctx, sec)
	}))
	require.Eventually(t, func() bool {
		return s.tlsSecret(t).Annotations[selfcerts.AnnotationRevoked] == value && len(certs.ParseCertificates(bundle())) == 1
	}, 40*time.Second, 200*time.Millisecond, "the previous CAs were never revoked")
	time.Sleep(time.Second)
	st.finishNoneLost(t, "revocation", s.plain)

	// The API server takes a moment to use a changed configuration.
	im.register(t, s.c, bundle())
	require.Eventually(t, func() bool {
		err := s.c.Create(ctx, secret("after"))
		if err == nil {
			_ = s.c.Delete(ctx, secret("after"))
			return false
		}
		assert.Contains(t, err.Error(), "failed calling webhook")
		return true
	}, 20*time.Second, 200*time.Millisecond, "the API server still trusts the exposed CA")
	hits := im.hits.Load()
	err = s.c.Create(ctx, secret("after"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "x509", "refused for the certificate")
	assert.Equal(t, hits, im.hits.Load(), "no request reaches the impostor once the API server uses the caBundle")
	require.NoError(t, s.c.Delete(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "impostor"}}))
}
