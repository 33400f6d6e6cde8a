package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// helmCase is one Helm CLI's run of the example chart (examples/webapp).
type helmCase struct {
	s     *suite
	h     *testbed.Helm
	ns    string
	chart string
	// marker replaces "change-me-" in the example's plaintext files, so the
	// log check of the suite finds any leak.
	marker string
	env    string
	// values files: encrypted by the sops CLI, and decrypted by it.
	enc1, dec1, enc2, dec2 string
}

// helm runs the example chart through one Helm CLI: install, the release
// record, upgrades, rollback, dry-run, uninstall, a namespace that did not
// opt in, and the three ways a chart can get tokens wrong.
func (s *suite) helm(t *testing.T, h *testbed.Helm) {
	c := s.newHelmCase(t, h)
	t.Run("install stores what helm renders from the decrypted values", c.install)
	t.Run("release record holds only ciphertext", c.releaseRecord)
	t.Run("upgrade with a changed value stores the new plaintext", c.upgradeChanged)
	t.Run("upgrade with nothing changed leaves the objects as they were", c.upgradeUnchanged)
	t.Run("rollback restores the earlier plaintext", c.rollback)
	t.Run("dry-run=server stores nothing; a server-side dry run shows the plaintext", c.dryRun)
	t.Run("uninstall removes everything", c.uninstall)
	t.Run("namespace that did not opt in stores ciphertext", c.notOptedIn)
	t.Run("chart without the helper is rejected", c.forgotHelper)
	t.Run("token missing from the index is rejected", c.tagMissing)
	t.Run("token moved to another path is rejected", c.pathEdited)
}

func (s *suite) newHelmCase(t *testing.T, h *testbed.Helm) *helmCase {
	c := &helmCase{s: s, h: h, ns: h.Name, marker: "PLAINTEXT-" + h.Name + "-"}
	ctx := context.Background()
	for _, ns := range []struct {
		name   string
		labels map[string]string
	}{{c.ns, map[string]string{mutate.LabelDecrypt: "enabled"}}, {c.ns + "-plain", nil}} {
		require.NoError(t, s.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.name, Labels: ns.labels}}))
	}

	r := s.recipients("age")
	c.env = c.fromExample(t, "examples/webapp/files/app.env.example")
	c.chart = c.prepareChart(t, nil)

	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o600))
		return p
	}
	plain1 := c.fromExample(t, "examples/webapp/secrets.example.yaml")
	plain2 := strings.Replace(plain1, c.marker+"db-password", c.marker+"db-password-rotated", 1)
	require.NotEqual(t, plain1, plain2)
	enc1 := sopskit.SopsEncrypt(t, []byte(plain1), "yaml", r)
	enc2 := sopskit.SopsEncrypt(t, []byte(plain2), "yaml", r)
	c.enc1, c.dec1 = write("secrets.enc.yaml", enc1), write("secrets.dec.yaml", sopskit.SopsDecrypt(t, enc1, "yaml", r))
	c.enc2, c.dec2 = write("secrets2.enc.yaml", enc2), write("secrets2.dec.yaml", sopskit.SopsDecrypt(t, enc2, "yaml", r))
	return c
}

// fromExample reads a plaintext example file of the repository with its
// placeholders marked.
func (c *helmCase) fromExample(t *testing.T, path string) string {
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	raw, err := os.ReadFile(filepath.Join(root, path))
	require.NoError(t, err)
	require.Contains(t, string(raw), "change-me-")
	return strings.ReplaceAll(string(raw), "change-me-", c.marker)
}

// prepareChart copies the example chart and the helper chart, encrypts the
// chart's dotenv file, lets edit change templates, and resolves the
// dependency with `helm dependency update`.
func (c *helmCase) prepareChart(t *testing.T, edit func(dir string)) string {
	root := t.TempDir()
	require.NoError(t, testbed.CopyFromRepo(root, "examples/webapp", "charts/sops-webhook-values"))
	dir := filepath.Join(root, "examples", "webapp")
	enc := sopskit.SopsEncrypt(t, []byte(c.env), "dotenv", c.s.recipients("age"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "files", "app.enc.env"), enc, 0o644))
	if edit != nil {
		edit(dir)
	}
	c.h.MustRun(t, "dependency", "update", dir)
	return dir
}

// expected renders the chart with a decrypted values file: what a plain
// `helm install` with that file would have stored. The document payload is
// still encrypted there; expectedEnv gives its expansion.
func (c *helmCase) expected(t *testing.T, release, decValues string) testbed.Rendered {
	return testbed.ParseManifests(t, c.h.MustRun(t, "template", release, c.chart, "-n", c.ns, "-f", decValues))
}

func (c *helmCase) expectedEnv(t *testing.T) map[string]string {
	out := map[string]string{}
	for line := range strings.Lines(c.env) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		require.True(t, ok)
		out[k] = v
	}
	return out
}

// assertStored checks every Secret and ConfigMap of the release holds what
// Helm renders from the decrypted values, and that no values index is left.
func (c *helmCase) assertStored(t *testing.T, release, decValues string) {
	t.Helper()
	ctx := context.Background()
	want := c.expected(t, release, decValues)
	require.Len(t, want.Secrets, 3)
	require.Len(t, want.ConfigMaps, 1)
	for name, w := range want.Secrets {
		got := &corev1.Secret{}
		require.NoError(t, c.s.c.Get(ctx, client.ObjectKey{Namespace: c.ns, Name: name}, got))
		wantData := stringMap(w.Data)
		if name == release+"-env" {
			wantData = c.expectedEnv(t)
		}
		assert.Equal(t, wantData, stringMap(got.Data), "Secret %s", name)
		assert.NotContains(t, got.Annotations, mutate.AnnotationValues, "Secret %s", name)
	}
	for name, w := range want.ConfigMaps {
		got := &corev1.ConfigMap{}
		require.NoError(t, c.s.c.Get(ctx, client.ObjectKey{Namespace: c.ns, Name: name}, got))
		assert.Equal(t, w.Data, got.Data, "ConfigMap %s", name)
		assert.NotContains(t, got.Annotations, mutate.AnnotationValues, "ConfigMap %s", name)
	}
}

func stringMap(m map[string][]byte) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

func (c *helmCase) secret(t *testing.T, ns, name string) *corev1.Secret {
	t.Helper()
	got := &corev1.Secret{}
	require.NoError(t, c.s.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, got))
	return got
}

func (c *helmCase) install(t *testing.T) {
	c.h.MustRun(t, "install", "webapp", c.chart, "-n", c.ns, "-f", c.enc1)
	c.assertStored(t, "webapp", c.dec1)

	// The cases the issue names, spelled out.
	creds := c.secret(t, c.ns, "webapp-credentials")
	assert.Equal(t, c.marker+"db-password", string(creds.Data["db-password"]), "a string")
	assert.Equal(t, c.marker+"api-key-secondary", string(creds.Data["api-key-secondary"]), "a list item")
	assert.Equal(t, c.marker+"smtp-password", string(creds.Data["smtp-password"]), "a nested map value")
	cfg := c.secret(t, c.ns, "webapp-app-config")
	assert.Contains(t, string(cfg.Data["config.yaml"]), "url: postgres://webapp:"+c.marker+"db-password@db.example.internal:6432/app", "tokens inside a config file, an int")
	settings := &corev1.ConfigMap{}
	require.NoError(t, c.s.c.Get(context.Background(), client.ObjectKey{Namespace: c.ns, Name: "webapp-settings"}, settings))
	assert.Contains(t, settings.Data["settings.ini"], "port = 6432\n", "an int in a ConfigMap")
	assert.Contains(t, settings.Data["settings.ini"], "beta = true\n", "a bool")
	assert.Equal(t, "data.api-key,data.api-key-secondary,data.db-password,data.smtp-password", creds.Annotations[mutate.AnnotationDecrypted])
}

func (c *helmCase) releaseRecord(t *testing.T) {
	manifest := c.h.MustRun(t, "get", "manifest", "webapp", "-n", c.ns)
	assert.Contains(t, manifest, "ENC[AES256_GCM,data:", "the manifest holds the tokens")
	assert.NotContains(t, manifest, c.marker, "plaintext in helm get manifest")

	rel := c.secret(t, c.ns, "sh.helm.release.v1.webapp.v1")
	assert.Equal(t, corev1.SecretType(mutate.HelmReleaseSecretType), rel.Type)
	gz, err := base64.StdEncoding.DecodeString(string(rel.Data["release"]))
	require.NoError(t, err)
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	require.NoError(t, err)
	record, err := io.ReadAll(zr)
	require.NoError(t, err)
	assert.Contains(t, string(record), "ENC[AES256_GCM,data:", "decoded the release record")
	assert.NotContains(t, string(record), c.marker, "plaintext in Helm's release Secret")
}

func (c *helmCase) upgradeChanged(t *testing.T) {
	c.h.MustRun(t, "upgrade", "webapp", c.chart, "-n", c.ns, "-f", c.enc2)
	c.assertStored(t, "webapp", c.dec2)
	assert.Equal(t, c.marker+"db-password-rotated", string(c.secret(t, c.ns, "webapp-credentials").Data["db-password"]))
}

func (c *helmCase) upgradeUnchanged(t *testing.T) {
	names := []string{"webapp-credentials", "webapp-app-config", "webapp-env"}
	before := map[string]*corev1.Secret{}
	for _, n := range names {
		before[n] = c.secret(t, c.ns, n)
	}
	c.h.MustRun(t, "upgrade", "webapp", c.chart, "-n", c.ns, "-f", c.enc2)
	for _, n := range names {
		after := c.secret(t, c.ns, n)
		assert.Equal(t, before[n].Data, after.Data, n)
		assert.Equal(t, before[n].Annotations, after.Annotations, n)
		assert.Equal(t, before[n].ResourceVersion, after.ResourceVersion, "%s was written again", n)
	}
	c.assertStored(t, "webapp", c.dec2)
}

func (c *helmCase) rollback(t *testing.T) {
	c.h.MustRun(t, "rollback", "webapp", "1", "-n", c.ns)
	c.assertStored(t, "webapp", c.dec1)
}

// dryRun: Helm's --dry-run=server renders and validates but prints its own
// rendering, not the objects the API server would store, so its output
// holds tokens, never plaintext. What the cluster would store is shown by a
// server-side dry run of the rendered manifests, which goes through the
// webhook.
func (c *helmCase) dryRun(t *testing.T) {
	out := c.h.MustRun(t, "install", "dry", c.chart, "-n", c.ns, "-f", c.enc1, "--dry-run=server")
	assert.Contains(t, out, "name: dry-credentials")
	assert.NotContains(t, out, c.marker, "helm prints its rendering, with tokens")

	rendered := c.h.MustRun(t, "template", "dry", c.chart, "-n", c.ns, "-f", c.enc1)
	cmd := exec.Command("kubectl", "create", "--dry-run=server", "-o", "yaml", "-n", c.ns, "-f", "-")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.s.kubeconfig)
	cmd.Stdin = strings.NewReader(rendered)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	served, err := cmd.Output()
	require.NoError(t, err, stderr.String())
	got := testbed.ParseManifests(t, string(served))
	require.Contains(t, got.Secrets, "dry-credentials")
	assert.Equal(t, c.marker+"db-password", string(got.Secrets["dry-credentials"].Data["db-password"]), "the server-side dry run shows the plaintext")

	for _, name := range []string{"dry-credentials", "dry-app-config", "dry-env"} {
		err := c.s.c.Get(context.Background(), client.ObjectKey{Namespace: c.ns, Name: name}, &corev1.Secret{})
		assert.True(t, apierrors.IsNotFound(err), "%s stored by a dry run: %v", name, err)
	}
}

func (c *helmCase) uninstall(t *testing.T) {
	c.h.MustRun(t, "uninstall", "webapp", "-n", c.ns)
	c.assertNothingOf(t, c.ns, "webapp")
}

// assertNothingOf checks no Secret or ConfigMap of release is left in ns.
func (c *helmCase) assertNothingOf(t *testing.T, ns, release string) {
	t.Helper()
	ctx := context.Background()
	var secrets corev1.SecretList
	require.NoError(t, c.s.c.List(ctx, &secrets, client.InNamespace(ns)))
	for _, s := range secrets.Items {
		assert.False(t, strings.HasPrefix(s.Name, release+"-") || strings.HasPrefix(s.Name, "sh.helm.release.v1."+release+"."), "left behind: Secret %s", s.Name)
	}
	var cms corev1.ConfigMapList
	require.NoError(t, c.s.c.List(ctx, &cms, client.InNamespace(ns)))
	for _, cm := range cms.Items {
		assert.False(t, strings.HasPrefix(cm.Name, release+"-"), "left behind: ConfigMap %s", cm.Name)
	}
}

func (c *helmCase) notOptedIn(t *testing.T) {
	ns := c.ns + "-plain"
	c.h.MustRun(t, "install", "webapp", c.chart, "-n", ns, "-f", c.enc1)
	creds := c.secret(t, ns, "webapp-credentials")
	assert.True(t, strings.HasPrefix(string(creds.Data["db-password"]), "ENC[AES256_GCM,data:"), "stored as rendered")
	assert.Contains(t, creds.Annotations, mutate.AnnotationValues)
	assert.NotContains(t, creds.Annotations, mutate.AnnotationDecrypted)
	c.h.MustRun(t, "uninstall", "webapp", "-n", ns)
}

// rejected installs a release that must be denied, with the flag that rolls
// a failed install back, and checks the message and that nothing is left.
func (c *helmCase) rejected(t *testing.T, release, chart, values string, want ...string) {
	t.Helper()
	rollback := "--atomic"
	if c.h.Name == "helm4" {
		rollback = "--rollback-on-failure"
	}
	_, err := c.h.Run("install", release, chart, "-n", c.ns, "-f", values, rollback, "--timeout", "60s")
	require.Error(t, err)
	for _, w := range want {
		assert.Contains(t, err.Error(), w)
	}
	assert.NotContains(t, err.Error(), c.marker, "plaintext in the error")
	c.assertNothingOf(t, c.ns, release)
	c.assertNoCiphertextStored(t)
}

// assertNoCiphertextStored checks no object of the opted-in namespace holds
// a SOPS marker, apart from Helm's own release records.
func (c *helmCase) assertNoCiphertextStored(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	var secrets corev1.SecretList
	require.NoError(t, c.s.c.List(ctx, &secrets, client.InNamespace(c.ns)))
	for _, s := range secrets.Items {
		if s.Type == mutate.HelmReleaseSecretType {
			continue
		}
		for k, v := range s.Data {
			assert.NotContains(t, string(v), "ENC[", "Secret %s field %s", s.Name, k)
		}
	}
}

func (c *helmCase) forgotHelper(t *testing.T) {
	chart := c.prepareChart(t, func(dir string) {
		p := filepath.Join(dir, "templates", "credentials.yaml")
		raw, err := os.ReadFile(p)
		require.NoError(t, err)
		edited := strings.Replace(string(raw), `{{- include "sops-webhook.values" . | nindent 4 }}`, `team: a`, 1)
		require.NotEqual(t, string(raw), edited)
		require.NoError(t, os.WriteFile(p, []byte(edited), 0o644))
	})
	c.rejected(t, "nohelper", chart, c.enc1,
		"sops-webhook: cannot decrypt Secret "+c.ns+"/nohelper-credentials field data.",
		"ENC[...] tokens without SOPS metadata", `include "sops-webhook.values"`)
}

func (c *helmCase) tagMissing(t *testing.T) {
	// A token from another encryption pasted into a template: the index,
	// rendered from the values, does not know its tag.
	foreign := sopskit.SopsEncrypt(t, []byte("x: "+c.marker+"foreign\n"), "yaml", c.s.recipients("age"))
	token := sopskit.ValuesLeaves(t, foreign)[0].Value.(string)
	chart := c.prepareChart(t, func(dir string) {
		tpl := "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-extra\n  annotations:\n    {{- include \"sops-webhook.values\" . | nindent 4 }}\nstringData:\n  pasted: \"" + token + "\"\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, "templates", "extra.yaml"), []byte(tpl), 0o644))
	})
	c.rejected(t, "pasted", chart, c.enc1,
		"sops-webhook: cannot decrypt Secret "+c.ns+"/pasted-extra field data.pasted",
		"missing from the values index")
}

func (c *helmCase) pathEdited(t *testing.T) {
	// Move the db password's token to the SMTP password by hand: the helper
	// indexes it under smtp:auth:password:, which it was not encrypted for.
	raw, err := os.ReadFile(c.enc1)
	require.NoError(t, err)
	lines := strings.Split(string(raw), "\n")
	var dbLine, smtpLine int
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, "    password: ENC[") && strings.HasPrefix(lines[i-1], "db:"):
			dbLine = i
		case strings.HasPrefix(l, "        password: ENC["):
			smtpLine = i
		}
	}
	require.NotZero(t, dbLine)
	require.NotZero(t, smtpLine)
	dbToken := strings.TrimPrefix(lines[dbLine], "    password: ")
	smtpToken := strings.TrimPrefix(lines[smtpLine], "        password: ")
	lines[dbLine], lines[smtpLine] = "    password: "+smtpToken, "        password: "+dbToken
	edited := filepath.Join(t.TempDir(), "edited.enc.yaml")
	require.NoError(t, os.WriteFile(edited, []byte(strings.Join(lines, "\n")), 0o600))

	c.rejected(t, "moved", c.chart, edited,
		"sops-webhook: cannot decrypt Secret "+c.ns+"/moved-",
		"does not authenticate")
}
