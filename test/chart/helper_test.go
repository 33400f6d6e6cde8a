package chart

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// trickyValues exercises the helper's walk: keys with dots and dashes, lists
// of maps, nested lists, empty maps and lists, strings that start with ENC
// but are not tokens, and unicode.
const trickyValues = `db.primary:
  pass-word: s3cr3t-dotted
  port: 5432
servers:
  - name: a
    password: s3cr3t-list-map-a
  - name: b
    password: s3cr3t-list-map-b
    tags: [x, s3cr3t-nested-list]
matrix:
  - [s3cr3t-m1, s3cr3t-m2]
empty: {}
none: []
notATokenA: "ENC is short for encoding"
notATokenB: "ENC[not a token]"
notATokenC: "ENC[AES256_GCM,"
ünïcødé:
  clé: s3cr3t-ünïcødé
token: s3cr3t-token
enabled: true
ratio: 0.5
`

// chartKinds are the two ways a chart gets the helper.
var chartKinds = []string{"dependency", "copied-template"}

// newChart writes a chart whose one Secret carries the helper's annotation
// and returns its directory.
func newChart(t *testing.T, h *testbed.Helm, kind string) string {
	t.Helper()
	root := t.TempDir()
	require.NoError(t, testbed.CopyFromRepo(root, "charts/sops-webhook-values"))
	dir := filepath.Join(root, "examples", "probe")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "templates"), 0o755))
	chartYAML := "apiVersion: v2\nname: probe\nversion: 0.1.0\n"
	switch kind {
	case "dependency":
		chartYAML += "dependencies:\n  - name: sops-webhook-values\n    version: 0.1.0\n    repository: file://../../charts/sops-webhook-values\n"
	case "copied-template":
		tpl, err := os.ReadFile(filepath.Join(root, "charts/sops-webhook-values/templates/_sops-webhook.tpl"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "templates", "_sops-webhook.tpl"), tpl, 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Chart.yaml"), []byte(chartYAML), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "templates", "secret.yaml"), []byte(`apiVersion: v1
kind: Secret
metadata:
  name: probe
  annotations:
    {{- include "sops-webhook.values" . | nindent 4 }}
stringData:
  token: {{ .Values.token | default "none" | quote }}
`), 0o644))
	if kind == "dependency" {
		h.MustRun(t, "dependency", "update", dir)
	}
	return dir
}

// renderIndex renders the chart with the values file and returns the
// annotations of its Secret.
func renderIndex(t *testing.T, h *testbed.Helm, chart string, values []byte) map[string]string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "values.yaml")
	require.NoError(t, os.WriteFile(f, values, 0o600))
	out := h.MustRun(t, "template", "probe", chart, "-f", f)
	r := testbed.ParseManifests(t, out)
	require.Contains(t, r.Secrets, "probe")
	return r.Secrets["probe"].Annotations
}

// TestHelperIndexOpensEveryToken renders the helper with both Helm majors,
// as a dependency and as a copied template, for values files the sops CLI
// encrypted, and checks that (1) the index equals an independent Go
// implementation of the same walk, (2) the webhook's decryptor opens every
// token with it and gets what Helm would render from `sops decrypt`'s
// output, and (3) both Helm majors render the same annotation.
func TestHelperIndexOpensEveryToken(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	src, err := keysource.LoadAge("k", key.IdentityFile)
	require.NoError(t, err)
	ring, err := keysource.NewRing(src)
	require.NoError(t, err)
	d := decrypt.New(ring)

	files := []struct {
		name string
		args []string
		// tokens is how many leaves the sops CLI encrypts.
		tokens int
	}{
		{"all values encrypted", nil, 17},
		{"--encrypted-regex", []string{"--encrypted-regex", "^(pass-word|password|token|matrix)$"}, 6},
	}
	for _, file := range files {
		enc := sopskit.SopsEncrypt(t, []byte(trickyValues), "yaml", r, file.args...)
		plain := sopskit.SopsDecrypt(t, enc, "yaml", r)
		oracle := sopskit.ValuesIndex(t, enc)
		rendered := map[string]string{}
		for _, h := range testbed.HelmCLIs(t, "") {
			for _, kind := range chartKinds {
				t.Run(file.name+"/"+h.Name+"/"+kind, func(t *testing.T) {
					ann := renderIndex(t, h, newChart(t, h, kind), enc)
					index := ann[mutate.AnnotationValues]
					require.NotEmpty(t, index, "no index rendered")
					assert.JSONEq(t, oracle, index, "the helper and the Go walk disagree")
					rendered[h.Name+"/"+kind] = index

					idx, err := decrypt.ParseIndex([]byte(index))
					require.NoError(t, err)
					tokens := d.Tokens(idx, nil)
					encLeaves, plainLeaves := sopskit.ValuesLeaves(t, enc), sopskit.ValuesLeaves(t, plain)
					require.Len(t, encLeaves, len(plainLeaves))
					opened := 0
					for i, leaf := range encLeaves {
						s, ok := leaf.Value.(string)
						if !ok || !strings.HasPrefix(s, "ENC[AES256_GCM,data:") {
							assert.Equal(t, plainLeaves[i].Value, leaf.Value, "a value sops left alone")
							continue
						}
						got, err := tokens.Decrypt(context.Background(), []byte(s))
						require.NoError(t, err, "token at %s", leaf.Path)
						assert.Equal(t, fmt.Sprint(plainLeaves[i].Value), string(got), "token at %s", leaf.Path)
						opened++
					}
					assert.Equal(t, file.tokens, opened)
				})
			}
		}
		t.Run(file.name+"/identical across Helm majors and packagings", func(t *testing.T) {
			require.Len(t, rendered, 4)
			for k, v := range rendered {
				assert.Equal(t, rendered["helm3/dependency"], v, k)
			}
		})
	}
}

// TestHelperRendersNothingWithoutTokens: plain values give no annotation,
// and the annotations map stays valid YAML (null).
func TestHelperRendersNothingWithoutTokens(t *testing.T) {
	for _, h := range testbed.HelmCLIs(t, "") {
		for _, kind := range chartKinds {
			t.Run(h.Name+"/"+kind, func(t *testing.T) {
				ann := renderIndex(t, h, newChart(t, h, kind), []byte(trickyValues))
				assert.Empty(t, ann)
			})
		}
	}
}

// TestHelperAnnotationSizeForAThousandSecrets measures the annotation for a
// values file with 1,000 encrypted secrets against the API server's 256 KiB
// limit for all of an object's annotations.
func TestHelperAnnotationSizeForAThousandSecrets(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	var plain strings.Builder
	plain.WriteString("secrets:\n")
	for i := range 1000 {
		fmt.Fprintf(&plain, "  service-%04d:\n    password: s3cr3t-%04d-abcdefghijklmnop\n", i, i)
	}
	enc := sopskit.SopsEncrypt(t, []byte(plain.String()), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
	for _, h := range testbed.HelmCLIs(t, "") {
		t.Run(h.Name, func(t *testing.T) {
			index := renderIndex(t, h, newChart(t, h, "dependency"), enc)[mutate.AnnotationValues]
			var parsed struct {
				Paths map[string]string `json:"paths"`
			}
			require.NoError(t, json.Unmarshal([]byte(index), &parsed))
			require.Len(t, parsed.Paths, 1000)
			size := len(mutate.AnnotationValues) + len(index)
			t.Logf("annotation for 1,000 secrets: %d bytes (%.1f%% of the 256 KiB limit)", size, 100*float64(size)/float64(256<<10))
			assert.Less(t, size, decrypt.MaxIndexSize/2, "well inside the limit")
		})
	}
}

// TestChartsLint runs `helm lint --strict` on the helper chart, on the
// webhook's own chart in both certificate modes, and on the example chart
// (with an encrypted values file and its encrypted dotenv file), with both
// Helm majors.
func TestChartsLint(t *testing.T) {
	repo, err := sopskit.RepoRoot()
	require.NoError(t, err)
	key := sopskit.NewAgeKey(t, false)
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	root := t.TempDir()
	require.NoError(t, testbed.CopyFromRepo(root, "charts/sops-webhook-values", "examples/webapp"))
	example := filepath.Join(root, "examples", "webapp")
	values := filepath.Join(t.TempDir(), "secrets.enc.yaml")
	plain, err := os.ReadFile(filepath.Join(example, "secrets.example.yaml"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(values, sopskit.SopsEncrypt(t, plain, "yaml", r), 0o600))
	env, err := os.ReadFile(filepath.Join(example, "files", "app.env.example"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(example, "files", "app.enc.env"), sopskit.SopsEncrypt(t, env, "dotenv", r), 0o600))

	for _, h := range testbed.HelmCLIs(t, "") {
		t.Run(h.Name, func(t *testing.T) {
			h.MustRun(t, "lint", "--strict", filepath.Join(root, "charts", "sops-webhook-values"))
			webhook := filepath.Join(repo, "charts", "sops-webhook")
			h.MustRun(t, "lint", "--strict", webhook)
			h.MustRun(t, "lint", "--strict", webhook, "--set", "certificates.mode=self-managed", "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true")
			_, err := h.Run("lint", "--strict", webhook, "--set", "certificates.mode=acme")
			require.Error(t, err, "an unknown certificates.mode fails")
			h.MustRun(t, "dependency", "update", example)
			h.MustRun(t, "lint", "--strict", example, "-f", values)
		})
	}
}
