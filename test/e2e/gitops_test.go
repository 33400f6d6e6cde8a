package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// TestGitOps applies rendered manifests the way GitOps tools do, through the
// real API server, the webhook binary and the registration of
// manifests/base, for both payload forms (a whole SOPS document; values
// tokens with the helper's index, rendered by `helm template`):
//
//   - kubectl client-side apply (Argo CD's default): the first apply is
//     decrypted; last-applied-configuration holds only ciphertext; applying
//     the same manifests again changes nothing (data, annotations,
//     resourceVersion); a changed value is decrypted on the next apply.
//
//   - server-side apply with field manager argocd-controller: the same, and
//     the decrypted fields belong to the applier, so the next apply needs no
//     --force-conflicts.
//
//   - kubectl diff --server-side: nothing for unchanged manifests; for a
//     changed value, only that Secret, and no plaintext in the output.
//
//   - Argo CD's server-side diff, emulated (test/testbed/gitops/argocd.go), with the
//     docs' Application: in sync after a sync, with and without
//     IncludeMutationWebhook; a changed ciphertext shows exactly its Secret,
//     masked. The docs' ignoreDifferences fallback covers every field the
//     webhook changes, checked against real dry runs.
//
//   - Flux: the docs' Kustomization, with no decryption section, run by a
//     real kustomize-controller against a stand-in for source-controller;
//     and the docs' HelmRelease values file is stored as it is.
func TestGitOps(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := setup(ctx, t)
	g := &gitopsBed{s: s, work: t.TempDir(), helm: testbed.HelmCLIs(t, s.kubeconfig)[0]}
	for _, form := range []string{"document", "values"} {
		t.Run(form+"/client-side apply", func(t *testing.T) { g.clientSide(ctx, t, form) })
		t.Run(form+"/server-side apply as argocd-controller", func(t *testing.T) { g.serverSide(ctx, t, form) })
		t.Run(form+"/Argo CD server-side diff (emulated)", func(t *testing.T) { g.argoCD(ctx, t, form) })
	}
	t.Run("Argo CD ignoreDifferences fallback", func(t *testing.T) { g.ignoreDifferences(ctx, t) })
	t.Run("Flux kustomize-controller", func(t *testing.T) { g.flux(ctx, t) })
	t.Run("Flux HelmRelease values file", func(t *testing.T) { g.fluxHelmRelease(ctx, t) })
}

type gitopsBed struct {
	s    *suite
	work string
	helm *testbed.Helm
}

// release is one rendering of the manifests: the Secrets' names and the
// plaintext each must hold under key after the webhook.
type release struct {
	manifests []byte
	want      map[string]string
	key       string
}

// render renders the manifests of form for names with prefix, holding the
// secret values of version v.
func (g *gitopsBed) render(t *testing.T, form, prefix string, v int) release {
	t.Helper()
	r := g.s.recipients("age")
	values := map[string]string{prefix + "-a": fmt.Sprintf("gitopsBed-a-PLAINTEXT-v%d", v), prefix + "-b": "gitopsBed-b-PLAINTEXT-same"}
	rel := release{want: map[string]string{}}
	switch form {
	case "document":
		rel.key = "app.env"
		var b bytes.Buffer
		for name, value := range values {
			enc := sopskit.SopsEncrypt(t, []byte("PASSWORD="+value+"\n"), "dotenv", r)
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: team-a\ndata:\n  app.env: %s\n", name, base64.StdEncoding.EncodeToString(enc))
			rel.want[name] = "PASSWORD=" + value + "\n"
		}
		rel.manifests = b.Bytes()
	case "values":
		rel.key = "password"
		maps.Copy(rel.want, values)
		chart := g.chart(t)
		var plain bytes.Buffer
		plain.WriteString("secrets:\n")
		for name, value := range values {
			fmt.Fprintf(&plain, "  %s: %s\n", name, value)
		}
		file := filepath.Join(g.work, fmt.Sprintf("%s-v%d.enc.yaml", prefix, v))
		require.NoError(t, os.WriteFile(file, sopskit.SopsEncrypt(t, plain.Bytes(), "yaml", r), 0o600))
		out, err := g.helm.Run("template", prefix, chart, "-n", "team-a", "-f", file)
		require.NoError(t, err)
		rel.manifests = []byte(out)
	}
	return rel
}

// chart writes a chart whose Secrets take their values from .Values.secrets
// and carry the helper's index.
func (g *gitopsBed) chart(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(g.work, "chart")
	if _, err := os.Stat(dir); err == nil {
		return dir
	}
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	tpl, err := os.ReadFile(filepath.Join(root, "charts/sops-webhook-values/templates/_sops-webhook.tpl"))
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "templates"), 0o755))
	for name, body := range map[string]string{
		"Chart.yaml":                  "apiVersion: v2\nname: gitopsBed\nversion: 0.1.0\n",
		"templates/_sops-webhook.tpl": string(tpl),
		"templates/secrets.yaml": `{{- range $name, $v := .Values.secrets }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
  annotations:
    {{- include "sops-webhook.values" $ | nindent 4 }}
stringData:
  password: {{ $v | quote }}
{{- end }}
`,
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644))
	}
	return dir
}

// kubectl runs kubectl with manifests on stdin; it returns the output and
// the exit code (kubectl diff exits 1 when there are differences).
func (g *gitopsBed) kubectl(t *testing.T, stdin []byte, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", g.s.kubeconfig, "-n", "team-a"}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := cmd.ProcessState.ExitCode()
	if err != nil && !(args[0] == "diff" && code == 1) {
		require.NoError(t, err, "kubectl %s: %s", strings.Join(args, " "), stderr.String())
	}
	return stdout.String() + stderr.String(), code
}

// live returns the stored Secrets of rel.
func (g *gitopsBed) live(ctx context.Context, t *testing.T, rel release) map[string]*corev1.Secret {
	t.Helper()
	out := map[string]*corev1.Secret{}
	for name := range rel.want {
		s := &corev1.Secret{}
		require.NoError(t, g.s.c.Get(ctx, client.ObjectKey{Namespace: "team-a", Name: name}, s))
		out[name] = s
	}
	return out
}

// assertDecrypted checks that every Secret of rel holds its plaintext and
// no ciphertext or index is stored.
func (g *gitopsBed) assertDecrypted(ctx context.Context, t *testing.T, rel release) map[string]*corev1.Secret {
	t.Helper()
	live := g.live(ctx, t, rel)
	for name, s := range live {
		assert.Equal(t, rel.want[name], string(s.Data[rel.key]), "%s is stored decrypted", name)
		assert.NotContains(t, s.Annotations, "sops-webhook.io/values", "%s: the index is never stored", name)
	}
	return live
}

// assertUnchanged checks that a re-apply changed nothing.
func assertUnchanged(t *testing.T, before, after map[string]*corev1.Secret) {
	t.Helper()
	for name, b := range before {
		a := after[name]
		assert.Equal(t, b.ResourceVersion, a.ResourceVersion, "%s: resourceVersion", name)
		assert.Equal(t, b.Data, a.Data, "%s: data", name)
		assert.Equal(t, b.Annotations, a.Annotations, "%s: annotations", name)
	}
}

func (g *gitopsBed) clientSide(ctx context.Context, t *testing.T, form string) {
	prefix := "csa-" + form
	v1 := g.render(t, form, prefix, 1)
	g.kubectl(t, v1.manifests, "apply", "-f", "-")
	first := g.assertDecrypted(ctx, t, v1)
	for name, s := range first {
		last := s.Annotations[corev1.LastAppliedConfigAnnotation]
		require.NotEmpty(t, last, "%s has a last-applied-configuration", name)
		var cfg struct {
			Data       map[string][]byte `json:"data"`
			StringData map[string]string `json:"stringData"`
		}
		require.NoError(t, json.Unmarshal([]byte(last), &cfg))
		held := string(cfg.Data[v1.key]) + cfg.StringData[v1.key]
		assert.Contains(t, held, "ENC[", "%s: last-applied holds the ciphertext", name)
		assert.NotContains(t, last, plaintextMarker, "%s: last-applied holds no plaintext", name)
	}

	g.kubectl(t, v1.manifests, "apply", "-f", "-")
	assertUnchanged(t, first, g.live(ctx, t, v1))

	v2 := g.render(t, form, prefix, 2)
	g.kubectl(t, v2.manifests, "apply", "-f", "-")
	g.assertDecrypted(ctx, t, v2)
}

func (g *gitopsBed) serverSide(ctx context.Context, t *testing.T, form string) {
	prefix := "ssa-" + form
	ssa := []string{"apply", "--server-side", "--field-manager=argocd-controller", "-f", "-"}
	v1 := g.render(t, form, prefix, 1)
	g.kubectl(t, v1.manifests, ssa...)
	first := g.assertDecrypted(ctx, t, v1)
	for name, s := range first {
		var owned bool
		for _, mf := range s.ManagedFields {
			if mf.Manager == "argocd-controller" && mf.FieldsV1 != nil && strings.Contains(string(mf.FieldsV1.Raw), `"f:`+v1.key+`"`) {
				owned = true
			}
		}
		assert.True(t, owned, "%s: argocd-controller owns data.%s", name, v1.key)
	}

	g.kubectl(t, v1.manifests, ssa...)
	assertUnchanged(t, first, g.live(ctx, t, v1))
	out, code := g.kubectl(t, v1.manifests, "diff", "--server-side", "--field-manager=argocd-controller", "-f", "-")
	assert.Zero(t, code, "kubectl diff of unchanged manifests shows nothing: %s", out)

	v2 := g.render(t, form, prefix, 2)
	out, code = g.kubectl(t, v2.manifests, "diff", "--server-side", "--field-manager=argocd-controller", "-f", "-")
	assert.Equal(t, 1, code, "kubectl diff shows the changed value")
	assert.Contains(t, out, prefix+"-a")
	assert.NotContains(t, out, prefix+"-b", "the Secret whose value did not change is not in the diff")
	assert.NotContains(t, out, plaintextMarker, "the diff shows no plaintext")

	// No --force-conflicts: the decrypted fields are the applier's.
	g.kubectl(t, v2.manifests, ssa...)
	g.assertDecrypted(ctx, t, v2)
}
