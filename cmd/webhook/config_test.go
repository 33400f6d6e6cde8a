package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
	"github.com/sops-webhook/sops-webhook/pkg/selfcerts"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func TestLoadConfig(t *testing.T) {
	ageKey := sopskit.NewAgeKey(t, false)
	pgpKey := sopskit.NewPGPKey(t)
	dir := t.TempDir()
	secretLine := "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
	badAge := writeFile(t, dir, "bad.agekey", secretLine+"\n")
	pluginAge := writeFile(t, dir, "plugin.agekey", "AGE-PLUGIN-YUBIKEY-1QQQQQQQQQQQ\n")
	emptyAge := writeFile(t, dir, "empty.agekey", "# nothing here\n")
	header := "apiVersion: sops-webhook.io/v1alpha1\nkind: Config\n"

	tests := []struct {
		name    string
		body    string
		wantErr string // empty: valid
	}{
		{"age and pgp", header + "keys:\n- name: team-a\n  age: {identityFile: " + ageKey.IdentityFile + "}\n- name: legacy\n  pgp: {privateKeyFile: " + pgpKey.PrivateKeyFile + "}\n", ""},
		{"unknown field", header + "keys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + ", extra: 1}\n", `unknown field "keys[0].age.extra"`},
		{"unknown top-level field", header + "kees: []\n", `unknown field "kees"`},
		{"wrong kind", "apiVersion: v1\nkind: ConfigMap\nkeys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\n", "apiVersion/kind"},
		{"no keys", header + "keys: []\n", "keys: at least one key is required"},
		{"missing key file", header + "keys:\n- name: a\n  age: {identityFile: /nonexistent/key}\n", "keys[0] (a): open /nonexistent/key"},
		{"malformed age key", header + "keys:\n- name: a\n  age: {identityFile: " + badAge + "}\n", "line 1: malformed age identity"},
		{"age plugin refused", header + "keys:\n- name: a\n  age: {identityFile: " + pluginAge + "}\n", "age plugin identities are not supported"},
		{"empty identity set", header + "keys:\n- name: a\n  age: {identityFile: " + emptyAge + "}\n", "no age identity found"},
		{"pgp key is not age", header + "keys:\n- name: a\n  age: {identityFile: " + pgpKey.PrivateKeyFile + "}\n", "not an age identity"},
		{"two sources in one key", header + "keys:\n- name: a\n  age: {identityFile: /k/a}\n  pgp: {privateKeyFile: /k/b}\n", "exactly one of"},
		{"duplicate name", header + "keys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\n", `keys[1].name: "a" is used twice`},
		{"policy", header + "keys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\npolicy:\n- keys: [a]\n  namespaces: [team-a, \"team-a-*\"]\n  kinds: [Secret, ConfigMap]\n", ""},
		{"policy naming an unknown key", header + "keys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\npolicy:\n- keys: [b]\n  namespaces: [x]\n", `policy rule 1: keys: "b" is not a configured key`},
		{"policy with a bad selector", header + "keys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\npolicy:\n- keys: [a]\n  namespaceSelector: {matchExpressions: [{key: x, operator: Bogus}]}\n", "policy[0].namespaceSelector"},
		{"policy unknown field", header + "keys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\npolicy:\n- keys: [a]\n  namespace: [x]\n", `unknown field "policy[0].namespace"`},
		{"an empty policy list grants nothing: refused", header + "keys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\npolicy: []\n", "policy: an empty list would grant nothing"},
		{"requireRBAC without API access", header + "keys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\npolicy:\n- keys: [a]\n  namespaces: [\"*\"]\n  requireRBAC: true\n", "need API access"},
		{"azure key vault", header + "keys:\n- name: az\n  azureKeyVault: {vaultURL: \"https://v.vault.azure.net\", keyName: \"sops-*\"}\n", ""},
		{"azure key vault needs https", header + "keys:\n- name: az\n  azureKeyVault: {vaultURL: \"http://v\", keyName: k}\n", "must be an https:// URL"},
		{"azure key vault needs a key name", header + "keys:\n- name: az\n  azureKeyVault: {vaultURL: x}\n", "vaultURL and keyName are required"},
		{"gcp kms", header + "keys:\n- name: gcp\n  gcpKms: {resourceID: \"projects/p/locations/global/keyRings/r/cryptoKeys/*\"}\n", ""},
		{"gcp kms needs a resource ID", header + "keys:\n- name: gcp\n  gcpKms: {resourceID: x}\n", "must be projects/"},
		{"aws kms", header + "keys:\n- name: kms\n  awsKms: {arn: \"arn:aws:kms:eu-west-1:111122223333:key/*\"}\n", ""},
		{"aws kms needs an ARN", header + "keys:\n- name: kms\n  awsKms: {arn: x}\n", "must be a key ARN"},
		{"vault", header + "keys:\n- name: v\n  vaultTransit: {address: \"https://vault:8200\", enginePath: transit, keyName: \"app-*\", kubernetesAuth: {role: sops-webhook}}\n", ""},
		{"vault needs https", header + "keys:\n- name: v\n  vaultTransit: {address: \"http://vault:8200\", enginePath: transit, keyName: app, kubernetesAuth: {role: r}}\n", "must be an https:// URL"},
		{"generated key without its Secret", header + "keys:\n- name: cluster\n  generate: {}\n", "keys[0] (cluster): not generated yet"},
		{"generated key of an unknown type", header + "keys:\n- name: cluster\n  generate: {type: rsa}\n", `keys[0].generate.type: "rsa" is not x25519 or hybrid`},
		{"generated key name not a DNS label", header + "keys:\n- name: Cluster_Key\n  generate: {}\n", "keys[0].name: a generated key's name must be a DNS label"},
		{"generated key rotated too often", header + "keys:\n- name: cluster\n  generate: {rotateEvery: 10ms}\n", "keys[0].generate.rotateEvery: at least 1s, or 0 to never rotate"},
		{"generated key with a bad break-glass recipient", header + "keys:\n- name: cluster\n  generate: {breakGlass: [age1nope]}\n", `keys[0].generate.breakGlass: "age1nope" is not an age X25519 or hybrid recipient`},
		{"break-glass key that is not configured", header + "keys:\n- name: cluster\n  generate: {breakGlassKeys: [backup]}\n", `keys[0].generate.breakGlassKeys: "backup" is not a configured key`},
		{"break-glass key that is an age key", header + "keys:\n- name: cluster\n  generate: {breakGlassKeys: [a]}\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\n", `key "a": only an awsKms, gcpKms, azureKeyVault or vaultTransit key can be a break-glass key`},
		{"break-glass key that names a glob", header + "keys:\n- name: cluster\n  generate: {breakGlassKeys: [kms]}\n- name: kms\n  awsKms: {arn: \"arn:aws:kms:eu-west-1:111122223333:key/*\"}\n", `key "kms": names a glob of keys; a break-glass key must name one`},
		{"too many break-glass recipients and keys", header + "keys:\n- name: cluster\n  generate: {breakGlassKeys: [kms, kms, kms], breakGlass: [" + strings.Repeat(ageKey.Recipient+", ", 4) + ageKey.Recipient + "]}\n- name: kms\n  awsKms: {arn: \"arn:aws:kms:eu-west-1:111122223333:key/one\"}\n", "keys[0].generate: at most 7 break-glass recipients and keys together"},
		{"key name with a generation separator", header + "keys:\n- name: a@1\n  age: {identityFile: " + ageKey.IdentityFile + "}\n", `may not contain ',' or '@'`},
		{"vault needs a role", header + "keys:\n- name: v\n  vaultTransit: {address: \"https://vault:8200\", enginePath: transit, keyName: app}\n", "kubernetesAuth.role are required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), "config.yaml", tt.body)
			cfg, err := loadConfig(path)
			if err == nil {
				_, _, err = buildEngine(cfg, nil, engineDeps{})
			}
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.NotContains(t, err.Error(), secretLine[20:], "key material in a startup error")
		})
	}
}

// TestDefaultPolicy checks what a config grants without a policy section:
// every key decrypts Secrets in every namespace, and ConfigMaps only where
// a rule names them.
func TestDefaultPolicy(t *testing.T) {
	ageKey := sopskit.NewAgeKey(t, false)
	header := "apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n- name: a\n  age: {identityFile: " + ageKey.IdentityFile + "}\n- name: b\n  age: {identityFile: " + ageKey.IdentityFile + "}\n"
	tests := []struct {
		name       string
		policy     string
		kind, key  string
		want       bool
		wantGrants []string
	}{
		{"no policy: Secrets", "", "Secret", "b", true, []string{"keys a, b: Secret in namespaces *"}},
		{"no policy: no ConfigMaps", "", "ConfigMap", "a", false, []string{"keys a, b: Secret in namespaces *"}},
		{"null policy is no policy", "policy: null\n", "ConfigMap", "a", false, []string{"keys a, b: Secret in namespaces *"}},
		{"ConfigMaps where a rule names them", "policy:\n- keys: [a]\n  namespaces: [team-*]\n  kinds: [Secret, ConfigMap]\n", "ConfigMap", "a", true, []string{"keys a: Secret, ConfigMap in namespaces team-*"}},
		{"a rule leaves other keys out", "policy:\n- keys: [a]\n  namespaces: [team-*]\n", "Secret", "b", false, []string{"keys a: Secret in namespaces team-*"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadConfig(writeFile(t, t.TempDir(), "config.yaml", header+tt.policy))
			require.NoError(t, err)
			eng, ring, err := buildEngine(cfg, nil, engineDeps{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = ring.Close() })
			require.NotNil(t, eng.Policy, "every engine has a policy")
			err = eng.Policy.Access("team-a", tt.kind, authenticationv1.UserInfo{Username: "u"}).Allowed(context.Background(), tt.key)
			assert.Equal(t, tt.want, err == nil, "key %s for a %s in team-a: %v", tt.key, tt.kind, err)
			assert.Equal(t, tt.wantGrants, cfg.grants())
		})
	}
}

func TestParseFlags(t *testing.T) {
	certDir := t.TempDir()
	writeFile(t, certDir, "tls.crt", "x")
	writeFile(t, certDir, "tls.key", "x")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"minimal", []string{"--config", "c.yaml", "--cert-dir", certDir}, ""},
		{"config required", []string{"--cert-dir", certDir}, "--config is required"},
		{"cert dir must hold the pair", []string{"--config", "c", "--cert-dir", t.TempDir()}, "tls.crt"},
		{"bad port", []string{"--config", "c", "--cert-dir", certDir, "--port", "0"}, "--port 0"},
		{"bad log level", []string{"--config", "c", "--cert-dir", certDir, "--log-level", "loud"}, "--log-level"},
		{"stray argument", []string{"--config", "c", "--cert-dir", certDir, "extra"}, "unexpected argument"},
		{"self-managed starts with an empty cert dir", []string{"--config", "c", "--cert-dir", t.TempDir(), "--certificates", "self-managed", "--namespace", "sops-webhook"}, ""},
		{"self-managed needs a namespace", []string{"--config", "c", "--cert-dir", t.TempDir(), "--certificates", "self-managed", "--namespace", ""}, "--namespace"},
		{"self-managed needs an existing cert dir", []string{"--config", "c", "--cert-dir", "/nonexistent", "--certificates", "self-managed", "--namespace", "x"}, "existing folder"},
		{"unknown certificates mode", []string{"--config", "c", "--cert-dir", certDir, "--certificates", "acme"}, `--certificates "acme"`},
		{"negative shutdown delay", []string{"--config", "c", "--cert-dir", certDir, "--shutdown-delay", "-1s"}, "--shutdown-delay"},
		{"budgets as quantities", []string{"--config", "c", "--cert-dir", certDir, "--memory-limit", "512Mi", "--decrypt-budget", "4Mi", "--body-budget", "32Mi"}, ""},
		{"memory limit not a quantity", []string{"--config", "c", "--cert-dir", certDir, "--memory-limit", "lots"}, `--memory-limit "lots"`},
		{"decrypt budget not positive", []string{"--config", "c", "--cert-dir", certDir, "--decrypt-budget", "0"}, "--decrypt-budget"},
		{"budget wait not shorter than the decrypt timeout", []string{"--config", "c", "--cert-dir", certDir, "--budget-wait", "5s"}, "--budget-wait"},
		{"no caller authentication chosen", []string{"--config", "c", "--cert-dir", certDir, "--caller-auth", ""}, "--client-ca-file is not set"},
		{"a client CA implies client certificates", []string{"--config", "c", "--cert-dir", certDir, "--client-ca-file", "ca.crt", "--client-names", "kube-apiserver"}, ""},
		{"client certificates need a CA", []string{"--config", "c", "--cert-dir", certDir, "--caller-auth", "client-certificate"}, "needs --client-ca-file"},
		{"network policy chosen", []string{"--config", "c", "--cert-dir", certDir, "--caller-auth", "network-policy"}, ""},
		{"a client CA contradicts none", []string{"--config", "c", "--cert-dir", certDir, "--caller-auth", "none", "--client-ca-file", "ca.crt"}, "need --caller-auth=client-certificate"},
		{"caBundle controller", []string{"--ca-bundle-controller", "--ca-bundle-configmap", "sops-webhook-ca", "--namespace", "sops-webhook"}, ""},
		{"caBundle controller without its ConfigMap", []string{"--ca-bundle-controller", "--namespace", "sops-webhook"}, "--ca-bundle-controller needs --ca-bundle-configmap"},
		{"names without a CA", []string{"--config", "c", "--cert-dir", certDir, "--caller-auth", "network-policy", "--client-names", "kube-apiserver"}, "need --caller-auth=client-certificate"},
		{"self-managed issues the API server's certificate", []string{"--config", "c", "--cert-dir", t.TempDir(), "--certificates", "self-managed", "--namespace", "x", "--caller-auth", "client-certificate"}, ""},
		{"unknown caller authentication", []string{"--config", "c", "--cert-dir", certDir, "--caller-auth", "trust-me"}, `--caller-auth "trust-me"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			args := tt.args
			if !slices.Contains(args, "--caller-auth") && !slices.Contains(args, "--client-ca-file") {
				args = append(args, "--caller-auth", "none")
			}
			_, err := parseFlags(args, &out)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestSelfManagedHosts(t *testing.T) {
	o, err := parseFlags([]string{"--config", "c", "--cert-dir", t.TempDir(), "--caller-auth", "none", "--certificates", "self-managed",
		"--namespace", "ops", "--service", "sw", "--tls-hosts", "127.0.0.1, sw.example"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"sw.ops.svc", "sw.ops.svc.cluster.local", "127.0.0.1", "sw.example"}, o.selfCerts.hosts)
}

// TestPlanMemory checks where the memory limit comes from and what is
// derived from it: a flag wins over the Downward API's variable, budgets
// given as flags win over derived ones, and with no limit at all the
// budgets are sized for the default and GOMEMLIMIT is left alone.
func TestPlanMemory(t *testing.T) {
	t.Run("the Downward API's variable", func(t *testing.T) {
		t.Setenv(memoryLimitEnv, "268435456")
		p, err := planMemory(memoryOptions{})
		require.NoError(t, err)
		assert.True(t, p.limited)
		assert.Equal(t, "$"+memoryLimitEnv, p.source)
		assert.Equal(t, budget.ForLimit(256<<20), p.Sizes)
	})
	t.Run("the flag wins, and budget flags override", func(t *testing.T) {
		t.Setenv(memoryLimitEnv, "268435456")
		p, err := planMemory(memoryOptions{limit: 1 << 30, decrypt: 3 << 20})
		require.NoError(t, err)
		assert.Equal(t, "--memory-limit", p.source)
		assert.EqualValues(t, (1<<30)/10*9, p.GoMemLimit)
		assert.EqualValues(t, 3<<20, p.Decrypt)
		assert.Equal(t, budget.ForLimit(1<<30).Bodies, p.Bodies)
	})
	t.Run("a bad variable stops the webhook", func(t *testing.T) {
		t.Setenv(memoryLimitEnv, "256Mi")
		_, err := planMemory(memoryOptions{})
		require.ErrorContains(t, err, memoryLimitEnv)
	})
}

func TestSelfManagedClientCertificate(t *testing.T) {
	dir := t.TempDir()
	o, err := parseFlags([]string{"--config", "c", "--cert-dir", dir, "--certificates", "self-managed", "--namespace", "x",
		"--caller-auth", "client-certificate", "--client-names", "apiserver.example,kube-apiserver"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "apiserver.example", o.selfCerts.clientName, "the certificate carries the first allowed name")
	assert.Equal(t, filepath.Join(dir, selfcerts.FileClientCA), o.clientCAFile)

	o, err = parseFlags([]string{"--config", "c", "--cert-dir", dir, "--certificates", "self-managed", "--namespace", "x",
		"--client-ca-file", "corp-ca.crt"}, io.Discard)
	require.NoError(t, err)
	assert.Empty(t, o.selfCerts.clientName, "a CA of the operator's: nothing to issue")
}

func TestGeneratedKeySpecs(t *testing.T) {
	cfg, err := parseConfig("config.yaml", []byte(`apiVersion: sops-webhook.io/v1alpha1
kind: Config
keys:
  - name: default-period
    generate: {}
  - name: never
    generate: {type: hybrid, rotateEvery: 0s}
  - name: monthly
    generate: {rotateEvery: 720h}
  - name: handmade
    gcpKms: {resourceID: "projects/p/locations/global/keyRings/r/cryptoKeys/k"}
`))
	require.NoError(t, err)
	assert.Equal(t, []clusterkeys.Spec{
		{Name: "default-period", RotateEvery: clusterkeys.DefaultRotateEvery},
		{Name: "never", Type: clusterkeys.Hybrid},
		{Name: "monthly", RotateEvery: 720 * time.Hour},
	}, cfg.specs())
}

// A rewrap adds the opening key's current generation and its break-glass
// recipients, drops its retired generations when asked, and refuses keys
// that are not generated.
func TestRewrapTargets(t *testing.T) {
	offline := sopskit.NewAgeKey(t, false)
	handmade := sopskit.NewAgeKey(t, false)
	cfg, err := parseConfig("config.yaml", []byte(`apiVersion: sops-webhook.io/v1alpha1
kind: Config
keys:
  - name: cluster
    generate: {breakGlass: [`+offline.Recipient+`], breakGlassKeys: [backup]}
  - name: handmade
    age: {identityFile: `+handmade.IdentityFile+`}
  - name: backup
    awsKms: {arn: "arn:aws:kms:eu-west-1:111122223333:key/backup"}
`))
	require.NoError(t, err)
	store := &clusterkeys.Store{Secrets: fake.NewClientset().CoreV1().Secrets("sops-webhook"), Name: clusterkeys.DefaultSecretName}
	specs := cfg.specs()
	require.NotNil(t, specs[0].Seal, "the break-glass key seals each generation")
	specs[0].Seal = func(context.Context, string) ([]byte, error) { return []byte("sealed"), nil } // AWS cannot run here
	_, err = store.Sync(context.Background(), specs)
	require.NoError(t, err)
	secret, err := store.Secrets.Get(context.Background(), store.Name, metav1.GetOptions{})
	require.NoError(t, err)
	secret.Annotations = map[string]string{clusterkeys.AnnotationRetire: "cluster@1"}
	_, err = store.Secrets.Update(context.Background(), secret, metav1.UpdateOptions{})
	require.NoError(t, err)
	gen, err := store.Sync(context.Background(), specs)
	require.NoError(t, err)
	key := gen.Key("cluster")
	require.Len(t, key.Generations, 2)
	ring, err := cfg.loadRing(gen)
	require.NoError(t, err)
	targets := cfg.rewrapTargets(gen, ring)

	plan, err := targets("cluster@2", false)
	require.NoError(t, err)
	assert.Equal(t, []string{key.Generations[0].Recipient, offline.Recipient}, plan.Add)
	assert.Empty(t, plan.Drop)
	require.Len(t, plan.Keys, 1)
	assert.Equal(t, "backup", plan.Keys[0].Name())
	plan, err = targets("cluster@2", true)
	require.NoError(t, err)
	assert.Equal(t, []string{key.Generations[1].Recipient}, plan.Drop, "generation 1 is retired")
	_, err = targets("handmade", false)
	require.ErrorContains(t, err, `key "handmade" opens it, and it is not generated in the cluster`)
}
