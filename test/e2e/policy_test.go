package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// policySuite runs the webhook with a policy against its own API server.
type policySuite struct {
	cp      *testbed.ControlPlane
	c       client.Client
	webhook *testbed.Webhook
	config  string
	keys    map[string]sopskit.AgeKey
	// cachedToken and cachedIndex are the values payload the cache test
	// used, whose data key is cached.
	cachedToken, cachedIndex string
}

// policyConfig grants team-a to teamANamespaces, team-b to team-b, both to
// namespaces labelled joint=true, and vault everywhere to users RBAC allows.
func (s *policySuite) policyConfig(teamANamespaces string) string {
	var b strings.Builder
	b.WriteString("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n")
	for _, name := range []string{"team-a", "team-b", "vault"} {
		fmt.Fprintf(&b, "- name: %s\n  age: {identityFile: %s}\n", name, s.keys[name].IdentityFile)
	}
	fmt.Fprintf(&b, `policy:
- keys: [team-a]
  namespaces: [%s]
- keys: [team-b]
  namespaces: [team-b]
- keys: [team-a, team-b]
  namespaceSelector: {matchLabels: {joint: "true"}}
- keys: [vault]
  namespaces: ["*"]
  kinds: [Secret, ConfigMap]
  requireRBAC: true
`, teamANamespaces)
	return b.String()
}

func TestPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := &policySuite{keys: map[string]sopskit.AgeKey{}}
	for _, k := range []string{"team-a", "team-b", "vault"} {
		s.keys[k] = sopskit.NewAgeKey(t, false)
	}
	cp, err := testbed.StartControlPlane()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cp.Stop() })
	s.cp, s.c = cp, cp.Client
	work := t.TempDir()
	kubeconfig := filepath.Join(work, "kubeconfig")
	require.NoError(t, cp.WriteKubeconfig(kubeconfig))
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	s.config = filepath.Join(work, "config.yaml")
	require.NoError(t, os.WriteFile(s.config, []byte(s.policyConfig("team-a")), 0o600))
	s.webhook, err = testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{
		Config: s.config, WorkDir: work, Log: verbose(),
		Args: []string{"--kubeconfig", kubeconfig, "--config-check-interval", "200ms", "--log-level", "debug"},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.webhook.Stop() })
	require.NoError(t, cp.RegisterWebhook(ctx, s.webhook.URL, s.webhook.CABundle))
	for _, ns := range []struct {
		name   string
		labels map[string]string
	}{{"team-a", nil}, {"team-b", nil}, {"joint", map[string]string{"joint": "true"}}, {"shared", nil}} {
		l := map[string]string{mutate.LabelDecrypt: "enabled"}
		for k, v := range ns.labels {
			l[k] = v
		}
		require.NoError(t, s.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.name, Labels: l}}))
	}
	require.NoError(t, cp.WaitForWebhook(ctx, "team-a"))

	t.Run("confused deputy: team A's ciphertext in team B's namespace is denied", s.confusedDeputy)
	t.Run("ConfigMaps only where a rule names them", s.configMapsNamed)
	t.Run("Shamir groups open when the granted keys reach the threshold", s.shamir)
	t.Run("requireRBAC: only users with verb use on the key", s.requireRBAC)
	t.Run("cache: 100 Secrets from one values file cost one unwrap", s.cache)
	t.Run("reload: a policy change applies on the next request, cached keys included", s.reload)
	t.Run("defaults: without a policy section keys decrypt Secrets only; policy: [] is refused", s.defaults)
}

func (s *policySuite) doc(t *testing.T, key string, plain string) []byte {
	return sopskit.SopsEncrypt(t, []byte(plain), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{s.keys[key]}})
}

func (s *policySuite) createSecret(c client.Client, ns, name string, data []byte, annotations map[string]string) error {
	return c.Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: annotations},
		Data:       map[string][]byte{"app.env": data},
	})
}

func (s *policySuite) confusedDeputy(t *testing.T) {
	docA := s.doc(t, "team-a", "PASSWORD=policy-PLAINTEXT-a\n")
	require.NoError(t, s.createSecret(s.c, "team-a", "own", docA, nil), "team A's key in team A's namespace")

	err := s.createSecret(s.c, "team-b", "stolen", docA, nil)
	require.Error(t, err)
	assert.True(t, apierrors.IsForbidden(err))
	for _, want := range []string{"Secret team-b/stolen", "field data.app.env", "the key that opens it is not granted here", `key "team-a" is not granted to Secrets in namespace "team-b"`} {
		assert.Contains(t, err.Error(), want)
	}
	assert.NotContains(t, err.Error(), "PLAINTEXT")
	assert.True(t, apierrors.IsNotFound(s.c.Get(context.Background(), client.ObjectKey{Namespace: "team-b", Name: "stolen"}, &corev1.Secret{})))
}

func (s *policySuite) configMapsNamed(t *testing.T) {
	err := s.c.Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cm", Namespace: "team-a"},
		Data:       map[string]string{"app.env": string(s.doc(t, "team-a", "X=policy-PLAINTEXT-cm\n"))},
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `key "team-a" is not granted to ConfigMaps in namespace "team-a"`)
}

func (s *policySuite) shamir(t *testing.T) {
	doc := sopskit.SopsEncryptGroups(t, []byte("PASSWORD=policy-PLAINTEXT-shamir\n"), "dotenv",
		[][]sopskit.AgeKey{{s.keys["team-a"]}, {s.keys["team-b"]}}, 2)
	err := s.createSecret(s.c, "team-a", "shamir", doc, nil)
	require.Error(t, err, "only team-a is granted in team-a: one share of two")
	assert.Contains(t, err.Error(), `key "team-b" is not granted to Secrets in namespace "team-a"`)

	require.NoError(t, s.createSecret(s.c, "joint", "shamir", doc, nil), "both granted in joint (by label)")
	got := &corev1.Secret{}
	require.NoError(t, s.c.Get(context.Background(), client.ObjectKey{Namespace: "joint", Name: "shamir"}, got))
	assert.Equal(t, "PASSWORD=policy-PLAINTEXT-shamir\n", string(got.Data["app.env"]))
	assert.Equal(t, "team-a,team-b", got.Annotations[mutate.AnnotationKeys])
}

// impersonating returns a client acting as user.
func (s *policySuite) impersonating(t *testing.T, user string) client.Client {
	cfg := rest.CopyConfig(s.cp.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	c, err := client.New(cfg, client.Options{})
	require.NoError(t, err)
	return c
}

func (s *policySuite) requireRBAC(t *testing.T) {
	ctx := context.Background()
	// Both users may create Secrets in shared; only alice may use the key.
	roles := []client.Object{
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "secret-writer", Namespace: "shared"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "get"}}}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "secret-writers", Namespace: "shared"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "secret-writer"},
			Subjects: []rbacv1.Subject{{Kind: "User", Name: "alice"}, {Kind: "User", Name: "bob"}}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "use-vault-key", Namespace: "shared"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{"sops-webhook.io"}, Resources: []string{"keys"}, ResourceNames: []string{"vault"}, Verbs: []string{"use"}}}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "alice-uses-vault", Namespace: "shared"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "use-vault-key"},
			Subjects: []rbacv1.Subject{{Kind: "User", Name: "alice"}}},
	}
	for _, o := range roles {
		require.NoError(t, s.c.Create(ctx, o))
	}
	doc := s.doc(t, "vault", "TOKEN=policy-PLAINTEXT-vault\n")

	err := s.createSecret(s.impersonating(t, "bob"), "shared", "bobs", doc, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `user "bob" may not use key "vault" in namespace "shared"`)

	alice := s.impersonating(t, "alice")
	require.NoError(t, s.createSecret(alice, "shared", "alices", doc, nil))
	got := &corev1.Secret{}
	require.NoError(t, alice.Get(ctx, client.ObjectKey{Namespace: "shared", Name: "alices"}, got))
	assert.Equal(t, "TOKEN=policy-PLAINTEXT-vault\n", string(got.Data["app.env"]))
}

// metric reads one series from the webhook's metrics; 0 when absent.
func (s *policySuite) metric(t *testing.T, series string) float64 {
	t.Helper()
	v, err := s.webhook.Metric(series)
	require.NoError(t, err)
	return v
}

const teamAUnwraps = `sops_webhook_key_unwraps_total{key="team-a",result="opened"}`

// valuesSecret is a Secret holding one values token with its index.
func (s *policySuite) valuesSecret(t *testing.T) (token, index string) {
	enc := sopskit.SopsEncrypt(t, []byte("db:\n  password: policy-PLAINTEXT-values\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{s.keys["team-a"]}})
	return sopskit.ValuesLeaves(t, enc)[0].Value.(string), sopskit.ValuesIndex(t, enc)
}

func (s *policySuite) cache(t *testing.T) {
	token, index := s.valuesSecret(t)
	s.cachedToken, s.cachedIndex = token, index
	before := s.metric(t, teamAUnwraps)
	for i := range 100 {
		require.NoError(t, s.createSecret(s.c, "team-a", fmt.Sprintf("values-%d", i), []byte(token), map[string]string{mutate.AnnotationValues: index}))
	}
	assert.Equal(t, before+1, s.metric(t, teamAUnwraps), "one unwrap of the data key for 100 Secrets")
	got := &corev1.Secret{}
	require.NoError(t, s.c.Get(context.Background(), client.ObjectKey{Namespace: "team-a", Name: "values-99"}, got))
	assert.Equal(t, "policy-PLAINTEXT-values", string(got.Data["app.env"]))
}

func (s *policySuite) reload(t *testing.T) {
	reloads := `sops_webhook_config_reloads_total{result="success"}`
	failures := `sops_webhook_config_reloads_total{result="failure"}`
	before := s.metric(t, reloads)

	// An invalid config is ignored: the webhook stays ready on the old one.
	require.NoError(t, os.WriteFile(s.config, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys: []\n"), 0o600))
	require.Eventually(t, func() bool { return s.metric(t, failures) >= 1 }, 10*time.Second, 100*time.Millisecond)
	resp, err := http.Get(s.webhook.ReadyURL)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "still ready")
	require.NoError(t, s.createSecret(s.c, "team-a", "after-bad-config", []byte(s.cachedToken), map[string]string{mutate.AnnotationValues: s.cachedIndex}))

	// team-a loses its grant in team-a: the cached data key no longer helps.
	require.NoError(t, os.WriteFile(s.config, []byte(s.policyConfig("elsewhere")), 0o600))
	require.Eventually(t, func() bool { return s.metric(t, reloads) > before }, 10*time.Second, 100*time.Millisecond)
	err = s.createSecret(s.c, "team-a", "after-revoke", []byte(s.cachedToken), map[string]string{mutate.AnnotationValues: s.cachedIndex})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `key "team-a" is not granted to Secrets in namespace "team-a"`)

	logs := s.webhook.Logs()
	assert.Contains(t, logs, "config reload failed; the previous config stays in use")
	assert.NotContains(t, logs, "PLAINTEXT", "plaintext in the webhook's logs")
}

// defaults reloads a config without a policy section: every key decrypts
// Secrets in every opted-in namespace, ConfigMaps nowhere; the log says so.
// A config with an empty policy list is refused and the previous one stays.
func (s *policySuite) defaults(t *testing.T) {
	reloads := `sops_webhook_config_reloads_total{result="success"}`
	failures := `sops_webhook_config_reloads_total{result="failure"}`
	noPolicy := s.policyConfig("team-a")
	noPolicy = noPolicy[:strings.Index(noPolicy, "policy:")]
	before := s.metric(t, reloads)
	require.NoError(t, os.WriteFile(s.config, []byte(noPolicy), 0o600))
	require.Eventually(t, func() bool { return s.metric(t, reloads) > before }, 10*time.Second, 100*time.Millisecond)

	require.NoError(t, s.createSecret(s.c, "shared", "default-secret", s.doc(t, "team-b", "X=policy-PLAINTEXT-default\n"), nil),
		"any key decrypts Secrets in any opted-in namespace")
	err := s.c.Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "default-cm", Namespace: "shared"},
		Data:       map[string]string{"app.env": string(s.doc(t, "team-b", "X=policy-PLAINTEXT-default-cm\n"))},
	})
	require.Error(t, err, "no ConfigMaps without a rule that names them")
	assert.True(t, apierrors.IsForbidden(err))
	assert.Contains(t, err.Error(), `key "team-b" is not granted to ConfigMaps in namespace "shared"`)
	assert.Contains(t, s.webhook.Logs(), `"grants":["keys team-a, team-b, vault: Secret in namespaces *"]`, "the reload logs what it grants")

	failed := s.metric(t, failures)
	require.NoError(t, os.WriteFile(s.config, []byte(noPolicy+"policy: []\n"), 0o600))
	require.Eventually(t, func() bool { return s.metric(t, failures) > failed }, 10*time.Second, 100*time.Millisecond)
	assert.Contains(t, s.webhook.Logs(), "policy: an empty list would grant nothing")
	require.NoError(t, s.createSecret(s.c, "shared", "after-empty-policy", s.doc(t, "team-a", "X=policy-PLAINTEXT-after\n"), nil),
		"the previous config stays in use")
}
