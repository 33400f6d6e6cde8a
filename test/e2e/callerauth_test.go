package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/callerauth"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/pkg/selfcerts"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// forgedReview is what an attacker posts straight to the webhook: another
// tenant's SOPS file in a Secret of namespace team-b, claimed to come from
// system:admin in system:masters.
func forgedReview(t *testing.T, file string, enc []byte) []byte {
	t.Helper()
	sec, err := json.Marshal(&corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: "forged", Namespace: "team-b"},
		Data:       map[string][]byte{file: enc},
	})
	require.NoError(t, err)
	b, err := json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       "forged-1",
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Secret"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "secrets"},
			Namespace: "team-b", Name: "forged", Operation: admissionv1.Create,
			UserInfo: authenticationv1.UserInfo{Username: "system:admin", Groups: []string{"system:masters"}},
			Object:   runtime.RawExtension{Raw: sec},
		},
	})
	require.NoError(t, err)
	return b
}

// clientCAFile is the CA of the test bed's API-server client certificate.
func clientCAFile(t *testing.T) string {
	t.Helper()
	id, err := testbed.LoadAPIServerClient()
	require.NoError(t, err)
	return id.CAFile
}

// callerAuth posts a forged review straight to the suite's webhook, which
// requires the API server's client certificate as every webhook of the
// test bed does: only the test bed's API-server certificate gets an
// answer. The API server's own writes are decrypted throughout. A second
// webhook started with --caller-auth=none answers the same forged review
// with the plaintext, which is what the default prevents.
func (s *suite) callerAuth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := plaintexts["dotenv"]
	enc := sopskit.SopsEncrypt(t, []byte(p.plain), "dotenv", s.recipients("age"))
	want := base64.StdEncoding.EncodeToString(sopskit.SopsDecrypt(t, enc, "dotenv", s.recipients("age")))
	review := forgedReview(t, p.file, enc)

	other, err := testpki.NewClientTLS(testbed.APIServerClientName, time.Hour)
	require.NoError(t, err)
	otherCert, err := tls.X509KeyPair(other.Cert, other.Key)
	require.NoError(t, err)
	send := func(wh *testbed.Webhook, certs []tls.Certificate, version uint16) (flood.ReviewResult, error) {
		cfg := wh.TLSConfig()
		cfg.Certificates, cfg.MaxVersion = certs, version
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		defer c.CloseIdleConnections()
		return flood.SendReview(ctx, c, wh.URL, review)
	}

	refusedBefore := map[string]float64{}
	for _, r := range callerauth.Reasons {
		refusedBefore[r] = s.metric(t, callerauth.RefusalsMetric+`{reason="`+r+`"}`)
	}
	callers := []struct {
		name   string
		certs  []tls.Certificate
		reason string // "" when answered
	}{
		{"no client certificate", nil, callerauth.ReasonNoCertificate},
		{"a certificate of another CA for the same name", []tls.Certificate{otherCert}, callerauth.ReasonUntrusted},
		{"the API server's certificate", []tls.Certificate{s.webhook.ClientCert}, ""},
	}
	for _, c := range callers {
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(c.name+"/"+tls.VersionName(version), func(t *testing.T) {
				r, err := send(s.webhook, c.certs, version)
				if c.reason == "" {
					// The forged review is one the webhook would decrypt:
					// what keeps it from others is the certificate alone.
					require.NoError(t, err)
					assert.True(t, r.Allowed)
					assert.Contains(t, string(r.Patch), want)
					return
				}
				require.Error(t, err, "a caller without the API server's certificate got an answer")
				assert.Equal(t, flood.ReviewResult{}, r)
			})
		}
	}
	for _, r := range callerauth.Reasons {
		wantMore := map[string]float64{callerauth.ReasonNoCertificate: 2, callerauth.ReasonUntrusted: 2}[r]
		assert.Equal(t, wantMore, s.metric(t, callerauth.RefusalsMetric+`{reason="`+r+`"}`)-refusedBefore[r], r)
	}
	assert.Equal(t, 0.0, s.metric(t, callerauth.UnauthenticatedMetric+`{mode="client-certificate"}`))

	t.Run("the API server's writes are decrypted", func(t *testing.T) {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "through-the-api-server", Namespace: "team-a"}, Data: map[string][]byte{p.file: enc}}
		require.NoError(t, s.c.Create(ctx, sec))
		got := &corev1.Secret{}
		require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(sec), got))
		assert.Equal(t, want, base64.StdEncoding.EncodeToString(got.Data[p.file]))
	})

	t.Run("caller-auth none answers anyone, and says so", func(t *testing.T) {
		open, err := testbed.StartWebhookWith(ctx, s.bin, testbed.WebhookOptions{
			Config: s.config, WorkDir: filepath.Join(s.work, "open"), Args: []string{"--caller-auth", "none"},
		})
		require.NoError(t, err)
		defer open.Stop()
		r, err := send(open, nil, tls.VersionTLS13)
		require.NoError(t, err)
		assert.Contains(t, string(r.Patch), want, "without caller authentication a forged review gets the plaintext")
		v, err := open.Metric(callerauth.UnauthenticatedMetric + `{mode="none"}`)
		require.NoError(t, err)
		assert.Equal(t, 1.0, v)
		assert.Contains(t, open.Logs(), "answers callers it cannot authenticate")
	})
}

// selfIssuedClient runs a self-managed webhook that issues the API
// server's client certificate itself (--caller-auth=client-certificate, no
// --client-ca-file), copies that certificate from its Secret into a second
// API server's AdmissionConfiguration as docs/operations.md says, and
// checks that this API server's writes are decrypted while a caller with
// the test bed's own API-server certificate (another CA) is refused.
func (s *deploySuite) selfIssuedClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const name = "sops-webhook-issued"
	// The configuration whose caBundle the webhook keeps; it selects no
	// namespace of this API server.
	mwc, err := testbed.LoadWebhookConfiguration("https://127.0.0.1:1/unused", nil)
	require.NoError(t, err)
	mwc.Name = name
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"never": "true"}}
	}
	require.NoError(t, s.c.Create(ctx, mwc))
	defer func() { _ = s.c.Delete(context.Background(), mwc) }()
	wh, err := testbed.StartWebhookWith(ctx, s.bin, testbed.WebhookOptions{
		Config: s.config, WorkDir: filepath.Join(s.work, "issued"), SelfManaged: true, Log: verbose(),
		Args: []string{"--certificates=self-managed", "--kubeconfig", s.kubeconfig, "--namespace", "sops-webhook",
			"--tls-secret", name, "--webhook-configuration", name, "--tls-hosts", "127.0.0.1", "--caller-auth", "client-certificate"},
	})
	require.NoError(t, err)
	defer wh.Stop()
	var sec corev1.Secret
	require.NoError(t, s.c.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: name}, &sec))
	require.NotEmpty(t, sec.Data[selfcerts.KeyClientCert])
	require.NotEmpty(t, sec.Data[selfcerts.KeyClientKey])

	wh.CABundle = sec.Data["ca.crt"]
	s.onlyThisAPIServer(ctx, t, wh, sec.Data[selfcerts.KeyClientCert], sec.Data[selfcerts.KeyClientKey])
}

// onlyThisAPIServer starts a second API server that presents certPEM and
// keyPEM to webhooks through the shipped AdmissionConfiguration, as
// docs/operations.md has the operator copy them, registers wh there and
// checks that its writes are decrypted; then that a caller with the test
// bed's own API-server certificate, of another CA, gets no answer from wh.
func (s *deploySuite) onlyThisAPIServer(ctx context.Context, t *testing.T, wh *testbed.Webhook, certPEM, keyPEM []byte) {
	t.Helper()
	admission, err := testbed.WriteAdmissionConfig(t.TempDir(), certPEM, keyPEM)
	require.NoError(t, err)
	cp, err := testbed.StartControlPlaneWith(map[string]string{"admission-control-config-file": admission})
	require.NoError(t, err)
	defer cp.Stop()
	require.NoError(t, cp.RegisterWebhook(ctx, wh.URL, wh.CABundle))
	require.NoError(t, cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}))
	require.NoError(t, cp.WaitForWebhook(ctx, "apps"))
	created := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "issued", Namespace: "apps"}, Data: map[string][]byte{"app.env": s.doc}}
	require.NoError(t, cp.Client.Create(ctx, created))
	got := &corev1.Secret{}
	require.NoError(t, cp.Client.Get(ctx, client.ObjectKeyFromObject(created), got))
	assert.Equal(t, string(s.plain), string(got.Data["app.env"]), "the API server with the issued certificate is answered")

	r, err := flood.SendReview(ctx, wh.Client(), wh.URL, forgedReview(t, "app.env", s.doc))
	assert.Error(t, err, "the test bed's own API-server certificate, of another CA, is refused")
	assert.Empty(t, r.Patch)
}

// certManagerIssuedClient applies the chart's client-certificate templates
// of cert-manager mode (callerAuth.mode=clientCertificate, no CA given),
// lets the cert-manager stand-in issue them with cert-manager's PKI
// library, and runs a webhook with the CA those pods would mount: a second
// API server presenting the issued certificate, copied as docs/operations.md
// says, is answered; the test bed's API-server certificate is refused.
func (s *deploySuite) certManagerIssuedClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := testbed.HelmCLIs(t, "")[0]
	rendered := s.renderChart(t, h, "sops-webhook", "--set", "callerAuth.mode=clientCertificate", "--show-only", "templates/clientcertificate.yaml")
	s.kubectl(t, []byte(rendered), "apply", "-f", "-")
	defer func() { _, _ = runKubectl(s.kubeconfig, []byte(rendered), "delete", "-f", "-") }()
	cm, err := testbed.NewCertManagerStandIn(s.cp.Config)
	require.NoError(t, err)
	var ca, issued corev1.Secret
	require.Eventually(t, func() bool {
		_ = cm.Reconcile(ctx) // the client CA's Issuer needs its Secret first
		return s.c.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: "sops-webhook-client-ca"}, &ca) == nil &&
			s.c.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: "sops-webhook-apiserver-client"}, &issued) == nil
	}, time.Minute, 200*time.Millisecond, "the stand-in issued the client CA and the API server's certificate")
	require.NoError(t, cm.Reconcile(ctx))

	// What the pods mount: the CA Secret's ca.crt.
	work := filepath.Join(s.work, "cert-manager-client")
	require.NoError(t, os.MkdirAll(work, 0o700))
	caFile := filepath.Join(work, "client-ca.crt")
	require.NoError(t, os.WriteFile(caFile, ca.Data["ca.crt"], 0o600))
	wh, err := testbed.StartWebhookWith(ctx, s.bin, testbed.WebhookOptions{
		Config: s.config, WorkDir: work, Log: verbose(), Args: []string{"--client-ca-file", caFile, "--client-names", "kube-apiserver"},
	})
	require.NoError(t, err)
	defer wh.Stop()

	s.onlyThisAPIServer(ctx, t, wh, issued.Data["tls.crt"], issued.Data["tls.key"])
}
