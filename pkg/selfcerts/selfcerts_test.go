package selfcerts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sops-webhook/sops-webhook/certs"
	"github.com/sops-webhook/sops-webhook/pkg/callerauth"
)

const (
	ns     = "sops-webhook"
	secret = "sops-webhook-tls"
	mwc    = "sops-webhook"
)

type fixture struct {
	client *fake.Clientset
	now    time.Time
}

func newFixture() *fixture {
	c := fake.NewClientset(&admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: mwc},
		Webhooks:   []admissionregistrationv1.MutatingWebhook{{Name: "a.sops-webhook.io"}, {Name: "b.sops-webhook.io"}},
	})
	return &fixture{client: c, now: time.Now()}
}

func (f *fixture) manager(t *testing.T) *Manager {
	t.Helper()
	m, err := New(Options{
		Client: f.client, Namespace: ns, SecretName: secret, WebhookConfiguration: mwc,
		Hosts: []string{"sops-webhook.sops-webhook.svc", "127.0.0.1"}, CertDir: t.TempDir(),
		CAValidity: 300 * 24 * time.Hour, CertValidity: 30 * 24 * time.Hour,
		Log: logr.Discard(), Now: func() time.Time { return f.now },
	})
	require.NoError(t, err)
	return m
}

func (f *fixture) secret(t *testing.T) *corev1.Secret {
	t.Helper()
	s, err := f.client.CoreV1().Secrets(ns).Get(context.Background(), secret, metav1.GetOptions{})
	require.NoError(t, err)
	return s
}

func (f *fixture) caBundles(t *testing.T) [][]byte {
	t.Helper()
	c, err := f.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), mwc, metav1.GetOptions{})
	require.NoError(t, err)
	var out [][]byte
	for _, w := range c.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out
}

// servedVerifies checks that the files in m's cert dir form a pair that the
// caBundle verifies for every host.
func servedVerifies(t *testing.T, f *fixture, m *Manager) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(m.o.CertDir, "tls.crt"), filepath.Join(m.o.CertDir, "tls.key"))
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	for _, bundle := range f.caBundles(t) {
		pool := x509.NewCertPool()
		require.True(t, pool.AppendCertsFromPEM(bundle))
		for _, h := range m.o.Hosts {
			_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: h, CurrentTime: f.now})
			require.NoError(t, err, h)
		}
	}
	return leaf
}

func TestReconcileIssuesAndIsStable(t *testing.T) {
	f := newFixture()
	m := f.manager(t)
	require.NoError(t, m.Reconcile(context.Background()))
	leaf := servedVerifies(t, f, m)
	data, bundles := f.secret(t).Data, f.caBundles(t)
	require.NotEmpty(t, writes(f), "the first pass created the Secret and patched the caBundle")

	// A second pass, and a second replica, change nothing: no write reaches
	// the API (the fake clientset keeps no resourceVersion to compare).
	f.client.ClearActions()
	require.NoError(t, m.Reconcile(context.Background()))
	other := f.manager(t)
	require.NoError(t, other.Reconcile(context.Background()))
	assert.Empty(t, writes(f), "a stable pass writes nothing")
	assert.Equal(t, data, f.secret(t).Data)
	assert.Equal(t, bundles, f.caBundles(t))
	assert.True(t, leaf.Equal(servedVerifies(t, f, other)), "replicas serve the same certificate")
}

// writes lists the API calls since the last ClearActions that change
// something.
func writes(f *fixture) []string {
	var out []string
	for _, a := range f.client.Actions() {
		switch a.GetVerb() {
		case "get", "list", "watch":
			continue
		}
		out = append(out, a.GetVerb()+" "+a.GetResource().Resource)
	}
	return out
}

func TestCertificateRenewedBeforeExpiryUnderTheSameCA(t *testing.T) {
	f := newFixture()
	m := f.manager(t)
	require.NoError(t, m.Reconcile(context.Background()))
	first := servedVerifies(t, f, m)
	bundle := f.caBundles(t)[0]

	f.now = f.now.Add(21 * 24 * time.Hour) // 9 of 30 days left: under a third
	require.NoError(t, m.Reconcile(context.Background()))
	second := servedVerifies(t, f, m)
	assert.False(t, first.Equal(second), "renewed")
	assert.Equal(t, bundle, f.caBundles(t)[0], "same CA, caBundle untouched")
}

func TestCARotationKeepsTheOldCATrusted(t *testing.T) {
	for _, how := range []string{"expiry", "requested"} {
		t.Run(how, func(t *testing.T) {
			f := newFixture()
			m := f.manager(t)
			require.NoError(t, m.Reconcile(context.Background()))
			oldLeaf := servedVerifies(t, f, m)
			oldCA := certs.ParseCertificates(f.secret(t).Data[keyTrusted])[0]

			switch how {
			case "expiry":
				f.now = f.now.Add(201 * 24 * time.Hour)
			case "requested":
				s := f.secret(t)
				s.Annotations = map[string]string{AnnotationRotate: "now"}
				_, err := f.client.CoreV1().Secrets(ns).Update(context.Background(), s, metav1.UpdateOptions{})
				require.NoError(t, err)
			}
			require.NoError(t, m.Reconcile(context.Background()))
			newLeaf := servedVerifies(t, f, m)
			assert.False(t, oldLeaf.Equal(newLeaf))
			trusted := certs.ParseCertificates(f.caBundles(t)[0])
			require.Len(t, trusted, 2, "new and old CA")
			assert.True(t, trusted[1].Equal(oldCA), "the old CA stays trusted while replicas may serve its certificate")
			if how != "requested" {
				return
			}
			assert.Equal(t, "now", f.secret(t).Annotations[AnnotationRotated])
			// Replicas still serving the old certificate stay verifiable.
			pool := x509.NewCertPool()
			pool.AddCert(trusted[0])
			pool.AddCert(trusted[1])
			_, err := oldLeaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1", CurrentTime: f.now})
			assert.NoError(t, err)
		})
	}
}

func TestBundleKeepsCAsAnotherReplicaAdded(t *testing.T) {
	f := newFixture()
	a := f.manager(t)
	require.NoError(t, a.Reconcile(context.Background()))
	foreign := certs.ParseCertificates(f.caBundles(t)[0])[0]

	// The Secret is lost (deleted by an admin): a fresh CA is made, but
	// the CA the running replicas' certificate chains to stays trusted.
	require.NoError(t, f.client.CoreV1().Secrets(ns).Delete(context.Background(), secret, metav1.DeleteOptions{}))
	require.NoError(t, a.Reconcile(context.Background()))
	trusted := certs.ParseCertificates(f.caBundles(t)[0])
	require.Len(t, trusted, 2)
	assert.True(t, trusted[1].Equal(foreign))
	servedVerifies(t, f, a)
}

func TestUnreadableSecretIsReplaced(t *testing.T) {
	f := newFixture()
	_, err := f.client.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: ns},
		Data:       map[string][]byte{keyTrusted: []byte("garbage")},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	m := f.manager(t)
	require.NoError(t, m.Reconcile(context.Background()))
	servedVerifies(t, f, m)
}

func TestNewNamesMissingOptions(t *testing.T) {
	_, err := New(Options{})
	require.Error(t, err)
	for _, want := range []string{"Kubernetes client", "namespace", "secret name", "webhook configuration", "cert dir", "hosts"} {
		assert.Contains(t, err.Error(), want)
	}
}

// clientVerifies checks the API server's client certificate in the Secret
// against the client CA file the webhook reads, as the webhook does, and
// returns it.
func clientVerifies(t *testing.T, f *fixture, m *Manager, leaf *x509.Certificate) error {
	t.Helper()
	v, err := callerauth.New(filepath.Join(m.o.CertDir, FileClientCA), []string{"kube-apiserver"}, nil)
	require.NoError(t, err)
	v.SetClock(func() time.Time { return f.now })
	return v.Verify(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}})
}

func (f *fixture) clientCert(t *testing.T) *x509.Certificate {
	t.Helper()
	s := f.secret(t)
	require.NotEmpty(t, s.Data[KeyClientKey])
	pair, err := tls.X509KeyPair(s.Data[KeyClientCert], s.Data[KeyClientKey])
	require.NoError(t, err, "the Secret holds a matching client certificate and key")
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	return leaf
}

func TestAPIServerClientCertificate(t *testing.T) {
	f := newFixture()
	m := f.manager(t)
	m.o.ClientName = "kube-apiserver"
	require.NoError(t, m.Reconcile(context.Background()))
	first := f.clientCert(t)
	assert.Equal(t, "kube-apiserver", first.Subject.CommonName)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, first.ExtKeyUsage)
	assert.NoError(t, clientVerifies(t, f, m, first))
	assert.Error(t, clientVerifies(t, f, m, servedVerifies(t, f, m)), "the serving certificate is no client certificate")

	t.Run("a stable pass changes nothing", func(t *testing.T) {
		f.client.ClearActions()
		require.NoError(t, m.Reconcile(context.Background()))
		assert.Empty(t, writes(f))
	})
	t.Run("renewed before expiry", func(t *testing.T) {
		f.now = f.now.Add(21 * 24 * time.Hour)
		require.NoError(t, m.Reconcile(context.Background()))
		renewed := f.clientCert(t)
		assert.False(t, first.Equal(renewed))
		assert.NoError(t, clientVerifies(t, f, m, renewed))
		first = renewed
	})
	t.Run("a rotated CA signs a new one and the old one still verifies", func(t *testing.T) {
		s := f.secret(t)
		s.Annotations = map[string]string{AnnotationRotate: "now"}
		_, err := f.client.CoreV1().Secrets(ns).Update(context.Background(), s, metav1.UpdateOptions{})
		require.NoError(t, err)
		require.NoError(t, m.Reconcile(context.Background()))
		rotated := f.clientCert(t)
		assert.False(t, first.Equal(rotated))
		ca := certs.ParseCertificates(f.secret(t).Data[keyTrusted])[0]
		assert.NoError(t, rotated.CheckSignatureFrom(ca), "signed by the new CA")
		assert.NoError(t, clientVerifies(t, f, m, rotated))
		assert.NoError(t, clientVerifies(t, f, m, first), "the API server keeps working until its copy is replaced")
	})
	t.Run("without a client name none is issued", func(t *testing.T) {
		g := newFixture()
		require.NoError(t, g.manager(t).Reconcile(context.Background()))
		assert.NotContains(t, g.secret(t).Data, KeyClientCert)
	})
}

// annotate sets annotations on the Secret, as an operator's kubectl does.
func (f *fixture) annotate(t *testing.T, kv ...string) {
	t.Helper()
	s := f.secret(t)
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	for i := 0; i < len(kv); i += 2 {
		s.Annotations[kv[i]] = kv[i+1]
	}
	_, err := f.client.CoreV1().Secrets(ns).Update(context.Background(), s, metav1.UpdateOptions{})
	require.NoError(t, err)
}

// TestRevokePreviousCAs rotates after an exposure and revokes the CAs
// before the new one: the revocation waits until replicas had time to load
// the new certificates, then neither the caBundle nor the client CA file
// trusts a certificate of the old CA, which whoever holds its key could
// still mint, while the new ones verify.
func TestRevokePreviousCAs(t *testing.T) {
	f := newFixture()
	m := f.manager(t)
	m.o.ClientName = "kube-apiserver"
	require.NoError(t, m.Reconcile(context.Background()))
	oldLeaf, oldClient := servedVerifies(t, f, m), f.clientCert(t)
	oldCA := certs.ParseCertificates(f.secret(t).Data[keyTrusted])[0]

	f.annotate(t, AnnotationRotate, "exposed", AnnotationRevoke, "exposed")
	require.NoError(t, m.Reconcile(context.Background()))
	require.NoError(t, m.Reconcile(context.Background()))
	assert.Len(t, certs.ParseCertificates(f.caBundles(t)[0]), 2, "the revocation waits for replicas to load the new certificate")
	assert.Empty(t, f.secret(t).Annotations[AnnotationRevoked])
	require.NoError(t, clientVerifies(t, f, m, oldClient), "the API server keeps working while it waits")

	f.now = f.now.Add(certs.Backdate + m.revokeAfter())
	require.NoError(t, m.Reconcile(context.Background()))
	s := f.secret(t)
	assert.Equal(t, "exposed", s.Annotations[AnnotationRevoked])
	newCA := certs.ParseCertificates(s.Data[keyTrusted])
	require.Len(t, newCA, 1, "only the signing CA is trusted")
	for _, bundle := range f.caBundles(t) {
		trusted := certs.ParseCertificates(bundle)
		require.Len(t, trusted, 1)
		assert.True(t, trusted[0].Equal(newCA[0]))
		pool := x509.NewCertPool()
		pool.AddCert(trusted[0])
		_, err := oldLeaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1", CurrentTime: f.now})
		assert.Error(t, err, "a certificate of the old CA no longer verifies against the caBundle")
	}
	servedVerifies(t, f, m)
	assert.Error(t, clientVerifies(t, f, m, oldClient), "a client certificate of the old CA is refused")
	assert.NoError(t, clientVerifies(t, f, m, f.clientCert(t)))

	// Another replica with an older view cannot bring the old CA back.
	cfg, err := f.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), mwc, metav1.GetOptions{})
	require.NoError(t, err)
	cfg.Webhooks[0].ClientConfig.CABundle = append(cfg.Webhooks[0].ClientConfig.CABundle, encodeCerts([]*x509.Certificate{oldCA})...)
	_, err = f.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(context.Background(), cfg, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, m.Reconcile(context.Background()))
	assert.Len(t, certs.ParseCertificates(f.caBundles(t)[0]), 1)
}

// TestBundleDropsForeignCAs puts a CA of someone else's in the caBundle:
// it is dropped on the next pass, unless KeepForeignCAs.
func TestBundleDropsForeignCAs(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep %v", keep), func(t *testing.T) {
			f := newFixture()
			m := f.manager(t)
			m.o.KeepForeignCAs = keep
			require.NoError(t, m.Reconcile(context.Background()))
			foreign, err := certs.NewCA("someone else's CA", f.now, time.Hour)
			require.NoError(t, err)
			cfg, err := f.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), mwc, metav1.GetOptions{})
			require.NoError(t, err)
			cfg.Webhooks[1].ClientConfig.CABundle = append(cfg.Webhooks[1].ClientConfig.CABundle, foreign.CertPEM...)
			_, err = f.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(context.Background(), cfg, metav1.UpdateOptions{})
			require.NoError(t, err)
			require.NoError(t, m.Reconcile(context.Background()))
			for _, bundle := range f.caBundles(t) {
				assert.Equal(t, keep, slices.ContainsFunc(certs.ParseCertificates(bundle), foreign.Cert.Equal))
			}
			servedVerifies(t, f, m)
		})
	}
}

// TestPublishedCABundle splits the self-managed mode in two identities: the
// replicas publish their CAs and only read the webhook configuration; the
// caBundle controller, which never reads the Secret, writes the caBundle.
// No certificate is issued from a CA before the caBundle trusts it, through
// bootstrap, rotation and revocation.
func TestPublishedCABundle(t *testing.T) {
	f := newFixture()
	m := f.manager(t)
	m.o.PublishTo = "sops-webhook-ca"
	c, err := NewCABundleController(CABundleOptions{Client: f.client, Namespace: ns, ConfigMap: "sops-webhook-ca", WebhookConfiguration: mwc,
		Log: logr.Discard(), Now: func() time.Time { return f.now }})
	require.NoError(t, err)
	ctx := context.Background()
	// byWhom runs pass and returns what it wrote and read, by resource.
	byWhom := func(pass func() error) (wrote, read []string) {
		f.client.ClearActions()
		_ = pass()
		for _, a := range f.client.Actions() {
			if a.GetVerb() == "get" {
				read = append(read, a.GetResource().Resource)
			} else {
				wrote = append(wrote, a.GetVerb()+" "+a.GetResource().Resource)
			}
		}
		return wrote, read
	}

	wrote, _ := byWhom(func() error { return m.Reconcile(ctx) })
	assert.NotContains(t, wrote, "update mutatingwebhookconfigurations", "the replicas never write the configuration")
	require.Error(t, m.Reconcile(ctx), "no certificate before the caBundle trusts the CA")
	assert.NoFileExists(t, filepath.Join(m.o.CertDir, "tls.crt"))

	wrote, read := byWhom(func() error { return c.Reconcile(ctx) })
	assert.Equal(t, []string{"update mutatingwebhookconfigurations"}, wrote)
	assert.NotContains(t, read, "secrets", "the controller never reads the TLS Secret")
	require.NoError(t, m.Reconcile(ctx))
	servedVerifies(t, f, m)

	f.annotate(t, AnnotationRotate, "exposed", AnnotationRevoke, "exposed")
	require.Error(t, m.Reconcile(ctx), "the new CA waits for the controller")
	require.NoError(t, c.Reconcile(ctx))
	require.NoError(t, m.Reconcile(ctx))
	servedVerifies(t, f, m)
	assert.Len(t, certs.ParseCertificates(f.caBundles(t)[0]), 2)

	f.now = f.now.Add(certs.Backdate + m.revokeAfter())
	require.NoError(t, m.Reconcile(ctx))
	require.NoError(t, c.Reconcile(ctx))
	for _, bundle := range f.caBundles(t) {
		assert.Len(t, certs.ParseCertificates(bundle), 1, "the revoked CA leaves the caBundle")
	}
	servedVerifies(t, f, m)
}
