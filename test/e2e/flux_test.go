package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
	"github.com/sops-webhook/sops-webhook/test/testbed/gitops"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// flux runs the docs' Kustomization with a real kustomize-controller and a
// stand-in for source-controller: a Secret holding a SOPS document and a
// ConfigMap of values tokens are stored decrypted and the Kustomization is
// Ready; later reconciliations change nothing; a new ciphertext is
// decrypted; a tampered document makes the Kustomization not Ready with the
// webhook's message.
func (g *gitopsBed) flux(ctx context.Context, t *testing.T) {
	tools := sopskit.Need(t, "kustomize-controller", func(tl sopskit.Tools) string { return tl.KustomizeController })
	require.NotEmpty(t, tools.FluxCRDDirs, "run make testbed: Flux CRDs missing")
	c := g.s.c
	require.NoError(t, gitops.InstallCRDs(ctx, c, tools.FluxCRDDirs))
	require.NoError(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "flux-system"}}))

	src, err := gitops.StartSourceControllerStandIn(c)
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Stop() })

	ks := &unstructured.Unstructured{}
	require.NoError(t, yaml.Unmarshal([]byte(docExample(t, argoDoc, "kind: Kustomization")), &ks.Object))
	_, hasDecryption, _ := unstructured.NestedFieldNoCopy(ks.Object, "spec", "decryption")
	require.False(t, hasDecryption, "the docs' Kustomization has no decryption section")
	repo, _, _ := unstructured.NestedString(ks.Object, "spec", "sourceRef", "name")
	path, _, _ := unstructured.NestedString(ks.Object, "spec", "path")
	target, _, _ := unstructured.NestedString(ks.Object, "spec", "targetNamespace")
	require.Equal(t, "team-a", target, "the docs' Kustomization targets the opted-in namespace of the test bed")

	rev1, want1 := g.fluxPublish(ctx, t, src, ks.GetNamespace(), repo, path, 1, false)
	kc, err := gitops.StartKustomizeController(tools.KustomizeController, g.s.kubeconfig, nil)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = kc.Stop()
		if t.Failed() {
			t.Logf("kustomize-controller log:\n%s", tail(kc.Logs(), 60))
		}
	})
	require.NoError(t, c.Create(ctx, ks), "the docs' Kustomization is valid for the real CRD")

	t.Run("applied and decrypted, Ready", func(t *testing.T) {
		g.fluxReady(ctx, t, ks, rev1)
		g.fluxDecrypted(ctx, t, want1)
	})

	t.Run("later reconciliations change nothing", func(t *testing.T) {
		before := g.fluxVersions(ctx, t, want1)
		for i := range 2 {
			logFrom := len(kc.Logs())
			g.fluxReconcile(ctx, t, ks, fmt.Sprintf("again-%d", i))
			assert.Equal(t, before, g.fluxVersions(ctx, t, want1), "resourceVersions after reconciliation %d", i+1)
			out := appliedOutput(t, kc.Logs()[logFrom:])
			t.Logf("reconciliation %d: kustomize-controller applied %v", i+1, out)
			for name := range want1 {
				assert.Equal(t, "unchanged", out[name], "kustomize-controller's apply of %s", name)
			}
		}
	})

	t.Run("a new ciphertext is decrypted", func(t *testing.T) {
		rev2, want2 := g.fluxPublish(ctx, t, src, ks.GetNamespace(), repo, path, 2, false)
		g.fluxReady(ctx, t, ks, rev2)
		g.fluxDecrypted(ctx, t, want2)
	})

	t.Run("a tampered document makes the Kustomization not Ready with the webhook's message", func(t *testing.T) {
		rev3, _ := g.fluxPublish(ctx, t, src, ks.GetNamespace(), repo, path, 3, true)
		msg := g.fluxNotReady(ctx, t, ks, rev3)
		t.Logf("Ready=False: %s", msg)
		assert.Contains(t, msg, `admission webhook "decrypt.sops-webhook.io" denied the request`)
		assert.Contains(t, msg, "Secret team-a/flux-doc", "the message names the object")
		assert.Contains(t, msg, "field data.app.yaml", "the message names the field")
		assert.NotContains(t, msg, plaintextMarker)
	})
	assert.NotContains(t, kc.Logs(), plaintextMarker, "kustomize-controller never saw plaintext")
}

// fluxWant is the plaintext each object must hold: name → key → value.
type fluxWant map[string]map[string]string

// fluxPublish publishes revision v of the repository: under dir, a Secret
// whose app.yaml is a SOPS document (its MAC broken when tamper), and
// a ConfigMap of values tokens rendered by `helm template` with the helper.
func (g *gitopsBed) fluxPublish(ctx context.Context, t *testing.T, src *gitops.SourceControllerStandIn, ns, repo, dir string, v int, tamper bool) (string, fluxWant) {
	t.Helper()
	r := g.s.recipients("age")
	plain := fmt.Sprintf("password: flux-%s-v%d\n", plaintextMarker, v)
	doc := sopskit.SopsEncrypt(t, []byte(plain), "yaml", r)
	if tamper {
		doc = flood.TamperMAC(t, flood.FloodDoc{Enc: doc}).Enc
	}
	secret := fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata:\n  name: flux-doc\ndata:\n  app.yaml: %s\n", base64.StdEncoding.EncodeToString(doc))

	chart := filepath.Join(g.work, "flux-chart")
	require.NoError(t, os.MkdirAll(filepath.Join(chart, "templates"), 0o755))
	tpl, err := os.ReadFile(filepath.Join(g.chart(t), "templates", "_sops-webhook.tpl"))
	require.NoError(t, err)
	for name, body := range map[string]string{
		"Chart.yaml":                  "apiVersion: v2\nname: flux\nversion: 0.1.0\n",
		"templates/_sops-webhook.tpl": string(tpl),
		"templates/config.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: flux-values
  annotations:
    {{- include "sops-webhook.values" . | nindent 4 }}
data:
  token: {{ .Values.token | quote }}
`,
	} {
		require.NoError(t, os.WriteFile(filepath.Join(chart, name), []byte(body), 0o644))
	}
	token := fmt.Sprintf("flux-token-%s-v%d", plaintextMarker, v)
	values := filepath.Join(g.work, fmt.Sprintf("flux-v%d.enc.yaml", v))
	require.NoError(t, os.WriteFile(values, sopskit.SopsEncrypt(t, []byte("token: "+token+"\n"), "yaml", r), 0o600))
	config, err := g.helm.Run("template", "flux", chart, "-f", values)
	require.NoError(t, err)

	dir = strings.TrimPrefix(strings.TrimPrefix(dir, "./"), "/")
	rev, err := src.Publish(ctx, ns, repo, map[string][]byte{
		dir + "/secret.yaml": []byte(secret),
		dir + "/config.yaml": []byte(config),
	})
	require.NoError(t, err)
	return rev, fluxWant{"flux-doc": {"app.yaml": plain}, "flux-values": {"token": token}}
}

// fluxStatus reads the Kustomization's Ready condition and the revision it
// last applied and attempted.
func (g *gitopsBed) fluxStatus(ctx context.Context, t *testing.T, ks *unstructured.Unstructured) (ready metav1.Condition, applied, attempted, handled string) {
	t.Helper()
	live := &unstructured.Unstructured{}
	live.SetGroupVersionKind(ks.GroupVersionKind())
	require.NoError(t, g.s.c.Get(ctx, client.ObjectKeyFromObject(ks), live))
	applied, _, _ = unstructured.NestedString(live.Object, "status", "lastAppliedRevision")
	attempted, _, _ = unstructured.NestedString(live.Object, "status", "lastAttemptedRevision")
	handled, _, _ = unstructured.NestedString(live.Object, "status", "lastHandledReconcileAt")
	conds, _, _ := unstructured.NestedSlice(live.Object, "status", "conditions")
	for _, c := range conds {
		b, _ := json.Marshal(c)
		var cond metav1.Condition
		_ = json.Unmarshal(b, &cond)
		if cond.Type == "Ready" {
			ready = cond
		}
	}
	return ready, applied, attempted, handled
}

// fluxReady waits until the Kustomization is Ready at revision.
func (g *gitopsBed) fluxReady(ctx context.Context, t *testing.T, ks *unstructured.Unstructured, revision string) {
	t.Helper()
	var last metav1.Condition
	require.Eventually(t, func() bool {
		ready, applied, _, _ := g.fluxStatus(ctx, t, ks)
		last = ready
		return ready.Status == metav1.ConditionTrue && applied == revision
	}, 2*time.Minute, 250*time.Millisecond, "Kustomization Ready at %s; last Ready condition: %+v", revision, last)
}

// fluxNotReady waits until the Kustomization has attempted revision and is
// not Ready; it returns the Ready condition's message.
func (g *gitopsBed) fluxNotReady(ctx context.Context, t *testing.T, ks *unstructured.Unstructured, revision string) string {
	t.Helper()
	var last metav1.Condition
	require.Eventually(t, func() bool {
		ready, _, attempted, _ := g.fluxStatus(ctx, t, ks)
		last = ready
		return ready.Status == metav1.ConditionFalse && attempted == revision
	}, 2*time.Minute, 250*time.Millisecond, "Kustomization not Ready at %s; last Ready condition: %+v", revision, last)
	return last.Message
}

// fluxReconcile asks for a reconciliation, as `flux reconcile` does, and
// waits until the controller has handled it and is Ready.
func (g *gitopsBed) fluxReconcile(ctx context.Context, t *testing.T, ks *unstructured.Unstructured, token string) {
	t.Helper()
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{"reconcile.fluxcd.io/requestedAt":%q}}}`, token)
	require.NoError(t, g.s.c.Patch(ctx, ks.DeepCopy(), client.RawPatch("application/merge-patch+json", patch)))
	require.Eventually(t, func() bool {
		ready, _, _, handled := g.fluxStatus(ctx, t, ks)
		return handled == token && ready.Status == metav1.ConditionTrue
	}, 2*time.Minute, 250*time.Millisecond, "reconciliation %s handled", token)
}

func (g *gitopsBed) fluxObject(ctx context.Context, t *testing.T, name string) (map[string]string, string) {
	t.Helper()
	if name == "flux-values" {
		cm := &corev1.ConfigMap{}
		require.NoError(t, g.s.c.Get(ctx, client.ObjectKey{Namespace: "team-a", Name: name}, cm))
		return cm.Data, cm.ResourceVersion
	}
	s := &corev1.Secret{}
	require.NoError(t, g.s.c.Get(ctx, client.ObjectKey{Namespace: "team-a", Name: name}, s))
	data := map[string]string{}
	for k, v := range s.Data {
		data[k] = string(v)
	}
	return data, s.ResourceVersion
}

func (g *gitopsBed) fluxDecrypted(ctx context.Context, t *testing.T, want fluxWant) {
	t.Helper()
	for name, kv := range want {
		data, _ := g.fluxObject(ctx, t, name)
		for k, v := range kv {
			assert.Equal(t, v, data[k], "%s: %s is stored decrypted", name, k)
		}
	}
}

func (g *gitopsBed) fluxVersions(ctx context.Context, t *testing.T, want fluxWant) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name := range want {
		_, rv := g.fluxObject(ctx, t, name)
		out[name] = rv
	}
	return out
}

// appliedOutput reads kustomize-controller's "server-side apply completed"
// log lines: object name → action ("unchanged", "configured", ...).
func appliedOutput(t *testing.T, logs string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, "server-side apply completed") {
			continue
		}
		var entry struct {
			Output map[string]string `json:"output"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil {
			continue
		}
		for obj, action := range entry.Output {
			// Secret/team-a/flux-doc → flux-doc
			out[obj[strings.LastIndex(obj, "/")+1:]] = action
		}
	}
	require.NotEmpty(t, out, "kustomize-controller logged its apply")
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fluxHelmRelease checks the docs' HelmRelease: it takes the encrypted
// values file from a ConfigMap in its own namespace, and that ConfigMap is
// stored as it is there, because that namespace is not opted in; in an
// opted-in namespace, it is stored as it is only with the opt-out label.
func (g *gitopsBed) fluxHelmRelease(ctx context.Context, t *testing.T) {
	var hr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec struct {
			ValuesFrom []struct {
				Kind      string `json:"kind"`
				Name      string `json:"name"`
				ValuesKey string `json:"valuesKey"`
			} `json:"valuesFrom"`
		} `json:"spec"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(docExample(t, argoDoc, "kind: HelmRelease")), &hr))
	require.Equal(t, "helm.toolkit.fluxcd.io/v2", hr.APIVersion)
	require.Len(t, hr.Spec.ValuesFrom, 1)
	from := hr.Spec.ValuesFrom[0]
	require.Equal(t, "ConfigMap", from.Kind)
	require.Contains(t, from.ValuesKey, ".enc.", "the release takes the encrypted values file")

	enc := sopskit.SopsEncrypt(t, []byte("token: "+plaintextMarker+"-helmrelease\n"), "yaml", g.s.recipients("age"))
	ns := hr.Metadata.Namespace
	if err := g.s.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		require.True(t, strings.Contains(err.Error(), "already exists"), err)
	}
	for _, cm := range []*corev1.ConfigMap{
		{ObjectMeta: metav1.ObjectMeta{Name: from.Name, Namespace: ns}},
		{ObjectMeta: metav1.ObjectMeta{Name: from.Name, Namespace: "team-a", Labels: map[string]string{mutate.LabelDecrypt: "disabled"}}},
	} {
		cm.Data = map[string]string{from.ValuesKey: string(enc)}
		require.NoError(t, g.s.c.Create(ctx, cm))
		stored := &corev1.ConfigMap{}
		require.NoError(t, g.s.c.Get(ctx, client.ObjectKeyFromObject(cm), stored))
		assert.Equal(t, string(enc), stored.Data[from.ValuesKey], "%s/%s keeps the encrypted values file as it is", ns, cm.Name)
	}
}
