package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed/gitops"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// argoDoc is the page whose Argo CD examples the tests read.
const argoDoc = "docs/migrating-from-helm-secrets.md"

// yamlBlocks returns the ```yaml blocks of a page of the docs.
func yamlBlocks(t *testing.T, page string) []string {
	t.Helper()
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(root, page))
	require.NoError(t, err)
	var out []string
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(b, -1) {
		out = append(out, string(m[1]))
	}
	return out
}

// docExample returns the one ```yaml block of page that contains marker.
func docExample(t *testing.T, page, marker string) string {
	t.Helper()
	var found []string
	for _, b := range yamlBlocks(t, page) {
		if strings.Contains(b, marker) {
			found = append(found, b)
		}
	}
	require.Len(t, found, 1, "%s has one yaml example holding %q", page, marker)
	return found[0]
}

// argoApplication is what the tests take from the docs' Application.
type argoApplication struct {
	name       string
	namespace  string
	opts       gitops.CompareOptions
	valueFiles []string
}

func readArgoApplication(t *testing.T) argoApplication {
	t.Helper()
	var app struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name        string            `json:"name"`
			Namespace   string            `json:"namespace"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			Project string `json:"project"`
			Source  struct {
				RepoURL        string `json:"repoURL"`
				TargetRevision string `json:"targetRevision"`
				Path           string `json:"path"`
				Helm           struct {
					ValueFiles []string `json:"valueFiles"`
				} `json:"helm"`
			} `json:"source"`
			Destination struct {
				Server    string `json:"server"`
				Namespace string `json:"namespace"`
			} `json:"destination"`
			SyncPolicy map[string]any `json:"syncPolicy"`
		} `json:"spec"`
	}
	require.NoError(t, yaml.UnmarshalStrict([]byte(docExample(t, argoDoc, "kind: Application")), &app), "the docs' Application parses, with no field the test does not know")
	require.Equal(t, "argoproj.io/v1alpha1", app.APIVersion)
	require.Equal(t, "Application", app.Kind)
	require.NotEmpty(t, app.Spec.Project)
	require.NotEmpty(t, app.Spec.Source.RepoURL)
	require.NotEmpty(t, app.Spec.Source.Path)
	require.NotEmpty(t, app.Spec.Destination.Server)
	opts := gitops.ParseCompareOptions(app.Metadata.Annotations[gitops.ArgoCDCompareOptions])
	require.True(t, opts.ServerSideDiff, "the docs' Application turns on the server-side diff")
	return argoApplication{name: app.Metadata.Name, namespace: app.Spec.Destination.Namespace, opts: opts, valueFiles: app.Spec.Source.Helm.ValueFiles}
}

// argoRender renders the manifests of form as the docs' Application makes
// Argo CD render them: values files in the Application's order, the
// encrypted one among them; each object with Argo CD's tracking
// annotation.
func (g *gitopsBed) argoRender(t *testing.T, argo *gitops.ArgoCD, app argoApplication, form, prefix string, v int) (release, []*unstructured.Unstructured) {
	t.Helper()
	rel := g.render(t, form, prefix, v)
	if form == "values" {
		var enc string
		for _, vf := range app.valueFiles {
			if strings.Contains(vf, ".enc.") {
				enc = vf
			}
		}
		require.NotEmpty(t, enc, "the Application lists an encrypted values file: %v", app.valueFiles)
		chart := g.chart(t)
		args := []string{"template", prefix, chart, "-n", app.namespace}
		for _, vf := range app.valueFiles {
			src := filepath.Join(g.work, fmt.Sprintf("%s-v%d.enc.yaml", prefix, v))
			if vf != enc {
				require.NoError(t, os.WriteFile(filepath.Join(chart, vf), []byte("replicas: 1\n"), 0o644))
			} else {
				b, err := os.ReadFile(src)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(filepath.Join(chart, vf), b, 0o600))
			}
			args = append(args, "-f", filepath.Join(chart, vf))
		}
		out, err := g.helm.Run(args...)
		require.NoError(t, err)
		rel.manifests = []byte(out)
	}
	var objs []*unstructured.Unstructured
	var b bytes.Buffer
	for _, doc := range strings.Split(string(rel.manifests), "\n---") {
		if strings.TrimSpace(strings.TrimPrefix(doc, "---")) == "" {
			continue
		}
		u := &unstructured.Unstructured{}
		require.NoError(t, yaml.Unmarshal([]byte(doc), &u.Object))
		if len(u.Object) == 0 {
			continue
		}
		u.SetNamespace(app.namespace)
		argo.Track(u)
		objs = append(objs, u)
		y, err := yaml.Marshal(u.Object)
		require.NoError(t, err)
		b.WriteString("---\n")
		b.Write(y)
	}
	require.Len(t, objs, len(rel.want))
	rel.manifests = b.Bytes()
	return rel, objs
}

// argoCD syncs rendered manifests as Argo CD does by default (client-side
// apply as argocd-controller) and checks what the emulated server-side diff
// reports: nothing for an in-sync application, with and without
// IncludeMutationWebhook; for a changed ciphertext, exactly the changed
// Secret, masked; nothing again once that is synced.
func (g *gitopsBed) argoCD(ctx context.Context, t *testing.T, form string) {
	app := readArgoApplication(t)
	argo, err := gitops.NewArgoCD(g.s.cp.Config, g.s.c, app.name)
	require.NoError(t, err)
	prefix := "argo-" + form
	sync := []string{"apply", "--field-manager=" + gitops.ArgoCDManager, "-f", "-"}

	v1, objs := g.argoRender(t, argo, app, form, prefix, 1)
	g.kubectl(t, v1.manifests, sync...)
	g.assertDecrypted(ctx, t, v1)
	for _, include := range []bool{app.opts.IncludeMutationWebhook, !app.opts.IncludeMutationWebhook} {
		opts := gitops.CompareOptions{ServerSideDiff: true, IncludeMutationWebhook: include}
		for _, o := range objs {
			res, err := argo.ServerSideDiff(ctx, o, opts)
			require.NoError(t, err)
			assert.False(t, res.Modified, "%s in sync (IncludeMutationWebhook=%v): predicted %s\nlive %s",
				o.GetName(), include, mask(t, res).predicted, mask(t, res).live)
		}
	}

	v2, objs2 := g.argoRender(t, argo, app, form, prefix, 2)
	for _, include := range []bool{true, false} {
		opts := gitops.CompareOptions{ServerSideDiff: true, IncludeMutationWebhook: include}
		for _, o := range objs2 {
			res, err := argo.ServerSideDiff(ctx, o, opts)
			require.NoError(t, err)
			changed := o.GetName() == prefix+"-a"
			assert.Equal(t, changed, res.Modified, "%s OutOfSync after its ciphertext changed: %v (IncludeMutationWebhook=%v)", o.GetName(), changed, include)
			m := mask(t, res)
			for _, side := range []string{m.predicted, m.live} {
				assert.NotContains(t, side, plaintextMarker, "the masked diff shows no plaintext")
				assert.NotContains(t, side, base64.StdEncoding.EncodeToString([]byte(v2.want[o.GetName()])), "the masked diff shows no plaintext, even encoded")
			}
			if changed {
				assert.NotEqual(t, m.predicted, m.live, "the masks of the changed value differ")
			}
		}
	}

	g.kubectl(t, v2.manifests, sync...)
	g.assertDecrypted(ctx, t, v2)
	for _, o := range objs2 {
		res, err := argo.ServerSideDiff(ctx, o, app.opts)
		require.NoError(t, err)
		assert.False(t, res.Modified, "%s in sync after the new ciphertext is synced", o.GetName())
	}
}

type masked struct{ predicted, live string }

func mask(t *testing.T, res gitops.DiffResult) masked {
	t.Helper()
	p, l, err := gitops.HideSecretData(res.PredictedLive, res.NormalizedLive)
	require.NoError(t, err)
	return masked{string(p), string(l)}
}

// ignoreDifferences checks the docs' ignoreDifferences fallback against
// real dry runs: the same manifests dry-run in an opted-in namespace and in
// one that is not differ only where a JSON pointer of the docs points, for
// Secrets and ConfigMaps, documents (also expanded) and values tokens; and
// with those fields ignored, every field Git holds equals the live object,
// so Argo CD's comparison finds the application in sync.
func (g *gitopsBed) ignoreDifferences(ctx context.Context, t *testing.T) {
	var spec struct {
		Spec struct {
			IgnoreDifferences []struct {
				Kind         string   `json:"kind"`
				JSONPointers []string `json:"jsonPointers"`
			} `json:"ignoreDifferences"`
		} `json:"spec"`
	}
	require.NoError(t, yaml.UnmarshalStrict([]byte(docExample(t, argoDoc, "ignoreDifferences:")), &spec))
	pointers := map[string][]string{}
	for _, d := range spec.Spec.IgnoreDifferences {
		pointers[d.Kind] = append(pointers[d.Kind], d.JSONPointers...)
	}
	require.NotEmpty(t, pointers["Secret"])
	require.NotEmpty(t, pointers["ConfigMap"])

	r := g.s.recipients("age")
	dotenv := sopskit.SopsEncrypt(t, []byte("USER=app\nPASSWORD="+plaintextMarker+"-ignore\n"), "dotenv", r)
	docSecret := fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata:\n  name: ignore-doc\ndata:\n  app.env: %s\n", base64.StdEncoding.EncodeToString(dotenv))
	expanded := fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata:\n  name: ignore-expand\n  annotations:\n    %s: \"true\"\ndata:\n  app.env: %s\n", mutate.AnnotationExpand, base64.StdEncoding.EncodeToString(dotenv))
	docConfigMap := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ignore-cm\ndata:\n  app.env: |\n%s", indent(string(dotenv), "    "))
	values := g.render(t, "values", "ignore-values", 1)
	manifests := []string{docSecret, expanded, docConfigMap}
	for _, doc := range strings.Split(string(values.manifests), "\n---") {
		if strings.Contains(doc, "kind: Secret") {
			manifests = append(manifests, doc)
		}
	}

	for _, m := range manifests {
		obj := &unstructured.Unstructured{}
		require.NoError(t, yaml.Unmarshal([]byte(m), &obj.Object))
		kind := obj.GetKind()
		t.Run(kind+"/"+obj.GetName(), func(t *testing.T) {
			dry := func(ns string) map[string]any {
				o := obj.DeepCopy()
				o.SetNamespace(ns)
				require.NoError(t, g.s.c.Patch(ctx, o, client.Apply, client.DryRunAll, client.FieldOwner(gitops.ArgoCDManager)))
				for _, f := range []string{"uid", "resourceVersion", "creationTimestamp", "managedFields", "namespace"} {
					unstructured.RemoveNestedField(o.Object, "metadata", f)
				}
				return o.Object
			}
			decrypted, stored := dry("team-a"), dry("plain")
			changed := gitops.ChangedPaths(stored, decrypted)
			require.NotEmpty(t, changed, "the webhook changed %s", obj.GetName())
			for _, p := range changed {
				assert.True(t, covered(p, pointers[kind]), "the docs' ignoreDifferences for %s cover %s", kind, p)
			}

			// Git's side with the ignored fields removed is part of live's.
			git := obj.DeepCopy().Object
			gitops.RemovePointers(git, pointers[kind])
			gitops.RemovePointers(decrypted, pointers[kind])
			for _, p := range gitops.ChangedPaths(git, decrypted) {
				_, inGit, _ := unstructured.NestedFieldNoCopy(git, gitops.PointerFields(p)...)
				assert.False(t, inGit, "with the docs' ignoreDifferences, %s of Git still differs from live", p)
			}
		})
	}
}

func covered(path string, pointers []string) bool {
	for _, p := range pointers {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

func indent(s, by string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return by + strings.Join(lines, "\n"+by) + "\n"
}
