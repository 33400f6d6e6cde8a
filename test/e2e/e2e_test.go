package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// plaintexts per format; each holds a marker the log check looks for.
var plaintexts = map[string]struct {
	file  string
	plain string
}{
	"yaml":   {"app.yaml", "db:\n    password: e2e-yaml-PLAINTEXT-1\n    port: 5432\nhosts:\n    - a\n    - b\n"},
	"json":   {"app.json", `{"password":"e2e-json-PLAINTEXT-2","port":5432}`},
	"dotenv": {"app.env", "PASSWORD=e2e-dotenv-PLAINTEXT-3\nUSER=app\n"},
	"ini":    {"app.ini", "[db]\npassword = e2e-ini-PLAINTEXT-4\n"},
	"binary": {"tls.key", "e2e-binary-PLAINTEXT-5\x00\xff\x01"},
}

const plaintextMarker = "PLAINTEXT-"

type suite struct {
	cp         *testbed.ControlPlane
	kubeconfig string
	c          client.Client
	webhook    *testbed.Webhook
	// bin, config and work are the webhook's binary, its config file and
	// the suite's folder, for tests that start another one.
	bin, config, work string
	age               sopskit.AgeKey
	pgp               sopskit.PGPKey
	other             sopskit.AgeKey
}

// TestMain gives controller-runtime's clients a logger that discards: the
// tests read the webhook's own logs, and controller-runtime otherwise
// prints a stack trace to say none was set.
func TestMain(m *testing.M) {
	ctrllog.SetLogger(logr.Discard())
	os.Exit(m.Run())
}

func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := setup(ctx, t)

	t.Run("a/opted-in namespace stores what sops decrypt prints", s.optedIn)
	t.Run("b/namespace without the label stores ciphertext", s.notOptedIn)
	t.Run("b/object opt-out label stores ciphertext", s.objectOptOut)
	t.Run("c/tampered MAC and unknown key are rejected naming the field", s.rejected)
	t.Run("d/objects the configuration excludes are not sent to the webhook", s.untouched)
	t.Run("e/update to a new ciphertext stores the new plaintext", s.update)
	t.Run("e/provenance: a record the request wrote is put back to the webhook's", s.provenance)
	t.Run("f/server-side dry-run returns plaintext and stores nothing", s.dryRun)
	for _, h := range testbed.HelmCLIs(t, s.kubeconfig) {
		t.Run(h.Name, func(t *testing.T) { s.helm(t, h) })
	}
	t.Run("auth/only the API server's client certificate gets an answer", s.callerAuth)
	t.Run("tls/1.1 refused, certificate reloaded from --cert-dir", s.tlsReload)
	// Last: everything above ran through the webhook with debug logging.
	t.Run("g/webhook logs hold no plaintext", s.logsClean)
	t.Run("shutdown/SIGTERM exits cleanly", s.shutdown)
}

func setup(ctx context.Context, t *testing.T) *suite {
	t.Helper()
	s := &suite{
		age:   sopskit.NewAgeKey(t, false),
		pgp:   sopskit.NewPGPKey(t),
		other: sopskit.NewAgeKey(t, false),
	}
	cp, err := testbed.StartControlPlane()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cp.Stop() })
	s.cp, s.c = cp, cp.Client

	work := t.TempDir()
	s.kubeconfig = filepath.Join(work, "kubeconfig")
	require.NoError(t, cp.WriteKubeconfig(s.kubeconfig))
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	config := filepath.Join(work, "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: sops-webhook.io/v1alpha1
kind: Config
keys:
  - name: team-a
    age: {identityFile: %s}
  - name: legacy
    pgp: {privateKeyFile: %s}
# Without a policy the keys decrypt Secrets only; these tests decrypt
# ConfigMaps too.
policy:
  - keys: [team-a, legacy]
    namespaces: ["*"]
    kinds: [Secret, ConfigMap]
`, s.age.IdentityFile, s.pgp.PrivateKeyFile)), 0o600))

	var echo io.Writer
	if testing.Verbose() {
		echo = os.Stderr
	}
	wh, err := testbed.StartWebhook(ctx, bin, config, work, echo, "--log-level", "debug")
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })
	s.webhook, s.bin, s.config, s.work = wh, bin, config, work
	require.NoError(t, cp.RegisterWebhook(ctx, wh.URL, wh.CABundle))

	for _, ns := range []struct {
		name   string
		optsIn bool
	}{{"team-a", true}, {"plain", false}} {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.name}}
		if ns.optsIn {
			obj.Labels = map[string]string{mutate.LabelDecrypt: "enabled"}
		}
		require.NoError(t, s.c.Create(ctx, obj))
	}
	require.NoError(t, cp.WaitForWebhook(ctx, "team-a"))
	return s
}

func (s *suite) recipients(kind string) sopskit.Recipients {
	if kind == "pgp" {
		return sopskit.Recipients{PGP: []sopskit.PGPKey{s.pgp}}
	}
	return sopskit.Recipients{Age: []sopskit.AgeKey{s.age}}
}

func (s *suite) optedIn(t *testing.T) {
	ctx := context.Background()
	for _, keyKind := range []string{"age", "pgp"} {
		r := s.recipients(keyKind)
		for format, p := range plaintexts {
			enc := sopskit.SopsEncrypt(t, []byte(p.plain), format, r)
			want := sopskit.SopsDecrypt(t, enc, format, r)
			for _, via := range []string{"data", "stringData"} {
				t.Run(keyKind+"/"+format+"/secret-"+via, func(t *testing.T) {
					sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: strings.ToLower(keyKind + "-" + format + "-" + via), Namespace: "team-a"}}
					if via == "data" {
						sec.Data = map[string][]byte{p.file: enc}
					} else {
						sec.StringData = map[string]string{p.file: string(enc)}
					}
					require.NoError(t, s.c.Create(ctx, sec))
					got := &corev1.Secret{}
					require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(sec), got))
					assert.Equal(t, string(want), string(got.Data[p.file]))
					assert.Equal(t, "data."+p.file, got.Annotations[mutate.AnnotationDecrypted])
					wantKey := map[string]string{"age": "team-a", "pgp": "legacy"}[keyKind]
					assert.Equal(t, wantKey, got.Annotations[mutate.AnnotationKeys])
				})
			}
			t.Run(keyKind+"/"+format+"/configmap", func(t *testing.T) {
				cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: keyKind + "-" + format + "-cm", Namespace: "team-a"}}
				if format == "binary" {
					cm.BinaryData = map[string][]byte{p.file: enc}
				} else {
					cm.Data = map[string]string{p.file: string(enc)}
				}
				require.NoError(t, s.c.Create(ctx, cm))
				got := &corev1.ConfigMap{}
				require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(cm), got))
				if format == "binary" {
					assert.Equal(t, string(want), string(got.BinaryData[p.file]))
				} else {
					assert.Equal(t, string(want), got.Data[p.file])
				}
			})
		}
	}
}

func (s *suite) notOptedIn(t *testing.T) {
	s.storedAsSent(t, "plain", nil)
}

func (s *suite) objectOptOut(t *testing.T) {
	s.storedAsSent(t, "team-a", map[string]string{mutate.LabelDecrypt: "disabled"})
}

// storedAsSent creates a Secret holding a SOPS document and checks the API
// server stored the ciphertext unchanged: the webhook was not called.
func (s *suite) storedAsSent(t *testing.T, namespace string, labels map[string]string) {
	ctx := context.Background()
	enc := sopskit.SopsEncrypt(t, []byte(plaintexts["dotenv"].plain), "dotenv", s.recipients("age"))
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		Name: "ciphertext", Namespace: namespace, Labels: labels,
	}, Data: map[string][]byte{"app.env": enc}}
	require.NoError(t, s.c.Create(ctx, sec))
	got := &corev1.Secret{}
	require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(sec), got))
	assert.Equal(t, string(enc), string(got.Data["app.env"]))
	assert.NotContains(t, got.Annotations, mutate.AnnotationDecrypted)
}

func (s *suite) rejected(t *testing.T) {
	ctx := context.Background()
	plain := "user: app\npassword: e2e-reject-PLAINTEXT-6\nnote_unencrypted: public\n"
	tampered := sopskit.SopsEncrypt(t, []byte(plain), "yaml", s.recipients("age"), "--unencrypted-suffix", "_unencrypted")
	tampered = []byte(strings.Replace(string(tampered), "note_unencrypted: public", "note_unencrypted: forged", 1))
	foreign := sopskit.SopsEncrypt(t, []byte(plain), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{s.other}})

	tests := []struct {
		name, field string
		value       []byte
		want        []string
	}{
		{"tampered-mac", "app.yaml", tampered, []string{"Secret team-a/tampered-mac", "field data.app.yaml", "MAC mismatch"}},
		{"unknown-key", "db.yaml", foreign, []string{"Secret team-a/unknown-key", "field data.db.yaml", "no configured key can open it", s.other.Recipient}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: tt.name, Namespace: "team-a"}, Data: map[string][]byte{tt.field: tt.value}}
			err := s.c.Create(ctx, sec)
			require.Error(t, err)
			assert.True(t, apierrors.IsForbidden(err), "want 403, got %v", err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), plaintextMarker)
			assert.True(t, apierrors.IsNotFound(s.c.Get(ctx, client.ObjectKeyFromObject(sec), &corev1.Secret{})), "rejected object was stored")
		})
	}
}

// calls sums the webhook's request counter over all outcomes for Secrets.
func (s *suite) calls(t *testing.T) float64 {
	t.Helper()
	var n float64
	for _, o := range []string{"skipped", "patched", "denied", "errored"} {
		n += s.metric(t, `sops_webhook_admission_requests_total{kind="Secret",operation="CREATE",outcome="`+o+`"}`)
	}
	return n
}

// untouched: objects the MutatingWebhookConfiguration's selectors and
// matchConditions exclude are stored as sent without calling the webhook,
// which the webhook's request counter shows. A Secret with a document is
// sent, as a control that the counter counts.
func (s *suite) untouched(t *testing.T) {
	ctx := context.Background()
	enc := sopskit.SopsEncrypt(t, []byte(plaintexts["dotenv"].plain), "dotenv", s.recipients("age"))
	require.NoError(t, s.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "sops-webhook", Labels: map[string]string{mutate.LabelDecrypt: "enabled"},
	}}))
	tests := []struct {
		name   string
		secret *corev1.Secret
		called bool
	}{
		{"no SOPS content (matchConditions)", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "no-sops", Namespace: "team-a"},
			Data: map[string][]byte{"password": []byte("hunter2")}}, false},
		{"Helm release record", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sh.helm.release.v1.app.v1", Namespace: "team-a",
			Labels: map[string]string{"owner": "helm"}}, Type: mutate.HelmReleaseSecretType, Data: map[string][]byte{"release": enc}}, false},
		{"the webhook's own namespace, labelled", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "own", Namespace: "sops-webhook"},
			Data: map[string][]byte{"app.env": enc}}, false},
		{"control: a SOPS document is sent", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "control", Namespace: "team-a"},
			Data: map[string][]byte{"app.env": enc}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.calls(t)
			sent := tt.secret.DeepCopy()
			require.NoError(t, s.c.Create(ctx, tt.secret))
			got := &corev1.Secret{}
			require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(tt.secret), got))
			after := s.calls(t)
			if tt.called {
				assert.Equal(t, before+1, after, "the webhook was called")
				return
			}
			assert.Equal(t, before, after, "the webhook was not called")
			assert.Equal(t, sent.Data, got.Data, "stored as sent")
			assert.NotContains(t, got.Annotations, mutate.AnnotationDecrypted)
		})
	}
}

func (s *suite) update(t *testing.T) {
	ctx := context.Background()
	r := s.recipients("age")
	v1 := sopskit.SopsEncrypt(t, []byte("PASSWORD=e2e-update-PLAINTEXT-7a\n"), "dotenv", r)
	v2 := sopskit.SopsEncrypt(t, []byte("PASSWORD=e2e-update-PLAINTEXT-7b\n"), "dotenv", r)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "rotating", Namespace: "team-a"}, Data: map[string][]byte{"app.env": v1, "other": []byte("plain")}}
	require.NoError(t, s.c.Create(ctx, sec))
	got := &corev1.Secret{}
	require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(sec), got))
	require.Equal(t, "PASSWORD=e2e-update-PLAINTEXT-7a\n", string(got.Data["app.env"]))

	got.Data["app.env"] = v2
	require.NoError(t, s.c.Update(ctx, got))
	require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(sec), got))
	assert.Equal(t, "PASSWORD=e2e-update-PLAINTEXT-7b\n", string(got.Data["app.env"]))
	assert.Equal(t, "plain", string(got.Data["other"]))
	assert.Equal(t, "data.app.env", got.Annotations[mutate.AnnotationDecrypted])

	// An update that changes nothing encrypted leaves the plaintext alone.
	got.Data["other"] = []byte("plain2")
	require.NoError(t, s.c.Update(ctx, got))
	require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(sec), got))
	assert.Equal(t, "PASSWORD=e2e-update-PLAINTEXT-7b\n", string(got.Data["app.env"]))
}

// provenance writes the annotations only the webhook writes, through the
// API server: on a Secret with nothing encrypted they are removed; on one
// the webhook decrypted they are put back to its record.
func (s *suite) provenance(t *testing.T) {
	ctx := context.Background()
	forged := map[string]string{mutate.AnnotationDecrypted: "data.password", mutate.AnnotationKeys: "team-a", "team": "a"}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "typed-in", Namespace: "team-a", Annotations: forged},
		Data: map[string][]byte{"password": []byte("typed-in")}}
	require.NoError(t, s.c.Create(ctx, sec))
	got := &corev1.Secret{}
	require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(sec), got))
	assert.Equal(t, map[string]string{"team": "a"}, got.Annotations, "a record of nothing decrypted is removed")

	require.NoError(t, s.c.Get(ctx, client.ObjectKey{Namespace: "team-a", Name: "rotating"}, got))
	require.Equal(t, "data.app.env", got.Annotations[mutate.AnnotationDecrypted], "decrypted by the update subtest")
	got.Annotations[mutate.AnnotationDecrypted] = "data.app.env,data.other"
	got.Annotations[mutate.AnnotationKeys] = "legacy,team-a"
	require.NoError(t, s.c.Update(ctx, got))
	require.NoError(t, s.c.Get(ctx, client.ObjectKey{Namespace: "team-a", Name: "rotating"}, got))
	assert.Equal(t, "data.app.env", got.Annotations[mutate.AnnotationDecrypted], "put back to the webhook's record")
	assert.Equal(t, "team-a", got.Annotations[mutate.AnnotationKeys])
}

func (s *suite) dryRun(t *testing.T) {
	ctx := context.Background()
	enc := sopskit.SopsEncrypt(t, []byte("PASSWORD=e2e-dryrun-PLAINTEXT-8\n"), "dotenv", s.recipients("age"))
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "dry", Namespace: "team-a"}, Data: map[string][]byte{"app.env": enc}}
	require.NoError(t, s.c.Create(ctx, sec, client.DryRunAll))
	assert.Equal(t, "PASSWORD=e2e-dryrun-PLAINTEXT-8\n", string(sec.Data["app.env"]), "dry-run response holds the plaintext")
	err := s.c.Get(ctx, client.ObjectKeyFromObject(sec), &corev1.Secret{})
	assert.True(t, apierrors.IsNotFound(err), "dry-run stored the object: %v", err)
}

func (s *suite) logsClean(t *testing.T) {
	logs := s.webhook.Logs()
	require.Contains(t, logs, `"msg":"decrypted"`, "debug logs of decryptions were captured")
	require.Contains(t, logs, `"msg":"refused"`, "logs of refusals were captured")
	assert.NotContains(t, logs, plaintextMarker, "plaintext in the webhook's logs")
	for _, k := range []string{s.age.IdentityFile, s.pgp.PrivateKeyFile} {
		raw, err := os.ReadFile(k)
		require.NoError(t, err)
		for line := range strings.Lines(string(raw)) {
			if l := strings.TrimSpace(line); len(l) > 40 && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "-----") {
				assert.NotContains(t, logs, l, "key material in the webhook's logs")
			}
		}
	}
}

func (s *suite) metric(t *testing.T, series string) float64 {
	t.Helper()
	v, err := s.webhook.Metric(series)
	require.NoError(t, err)
	return v
}

func (s *suite) tlsReload(t *testing.T) {
	addr := strings.TrimSuffix(strings.TrimPrefix(s.webhook.URL, "https://"), "/mutate")
	// The client offers TLS 1.0-1.1 only, so a failure is the server's.
	_, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	require.Error(t, err, "TLS 1.1 handshake accepted")
	require.Contains(t, err.Error(), "protocol version", "the server refused the version, not the client")
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{s.webhook.ClientCert}})
	require.NoError(t, err, "TLS 1.2 refused")
	conn.Close()

	// Swap the pair in --cert-dir. A client that trusts only the new CA can
	// handshake only once the webhook serves the new certificate.

	b, err := testpki.NewTLS([]string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	require.NoError(t, b.WriteDir(s.webhook.CertDir))
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(b.CACert))
	require.Eventually(t, func() bool {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{s.webhook.ClientCert}})
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}, 20*time.Second, 100*time.Millisecond, "the webhook never served the new certificate")

	// Point the API server at the new CA and check admission still works.
	// (Its kept-alive connection from before the swap may carry on under the
	// old certificate; new connections use the new one.)
	mwc, err := testbed.LoadWebhookConfiguration(s.webhook.URL, b.CACert)
	require.NoError(t, err)
	live := mwc.DeepCopy()
	require.NoError(t, s.c.Get(context.Background(), client.ObjectKeyFromObject(mwc), live))
	live.Webhooks = mwc.Webhooks
	require.NoError(t, s.c.Update(context.Background(), live))
	require.NoError(t, s.cp.WaitForWebhook(context.Background(), "team-a"))
}

func (s *suite) shutdown(t *testing.T) {
	require.NoError(t, s.webhook.Stop(), "webhook exit status after SIGTERM")
	assert.Contains(t, s.webhook.Logs(), `"msg":"stopped"`)
}
