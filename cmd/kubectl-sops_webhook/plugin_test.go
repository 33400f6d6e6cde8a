package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// published is what a cluster's webhook publishes: a generated key with
// two generations, granted by name and by selector, and a hand-made one.
func published(current, older, handmade string) clusterkeys.Recipients {
	created := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	return clusterkeys.Recipients{Keys: []clusterkeys.PublishedKey{
		{Name: "cluster", Source: "generated", Generations: []clusterkeys.Generation{
			{Number: 2, Type: clusterkeys.X25519, Recipient: current, Created: created, State: clusterkeys.StateCurrent},
			{Number: 1, Type: clusterkeys.X25519, Recipient: older, Created: created, State: clusterkeys.StateActive},
		}, Grants: []clusterkeys.Grant{
			{Namespaces: []string{"team-a", "team-b-*"}, Kinds: []string{"Secret"}},
			{NamespaceSelector: "tier=prod", Kinds: []string{"Secret", "ConfigMap"}},
		}},
		{Name: "legacy", Source: "age", Age: []string{handmade}, Grants: []clusterkeys.Grant{{Namespaces: []string{"team-a"}, Kinds: []string{"Secret"}}}},
	}}
}

func TestSopsConfigGolden(t *testing.T) {
	tests := []struct {
		name         string
		clusters     []clusterkeys.Recipients
		pathTemplate string
		breakGlass   []string
	}{
		{"one-cluster", []clusterkeys.Recipients{published("age1east2", "age1east1", "age1legacy")}, clusterkeys.DefaultPathTemplate, nil},
		{"two-clusters-break-glass", []clusterkeys.Recipients{published("age1east2", "age1east1", "age1legacy"), published("age1west2", "age1west1", "age1legacy")},
			`^clusters/[^/]+/{namespace}/`, []string{"age1offline"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			require.NoError(t, writeSopsConfig(streams{out: &out}, clusterkeys.Merge(tt.clusters...).CreationRulesWith(tt.pathTemplate, tt.breakGlass)))
			golden := filepath.Join("testdata", tt.name+".sops.yaml")
			if *update {
				require.NoError(t, os.WriteFile(golden, out.Bytes(), 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err)
			assert.Equal(t, string(want), out.String(), "%s (go test -update rewrites it)", golden)
		})
	}
}

func TestRecipientsForNamespace(t *testing.T) {
	pub := published("age1east2", "age1east1", "age1legacy")
	tests := []struct {
		name   string
		ns     string
		labels labels.Set
		want   []recipient
	}{
		{"granted by name, with the hand-made key", "team-a", labels.Set{}, []recipient{
			{Key: "cluster", Source: "generated", Generation: 2, Recipient: "age1east2", Kinds: []string{"Secret"}},
			{Key: "legacy", Source: "age", Recipient: "age1legacy", Kinds: []string{"Secret"}},
		}},
		{"granted by glob", "team-b-dev", labels.Set{}, []recipient{{Key: "cluster", Source: "generated", Generation: 2, Recipient: "age1east2", Kinds: []string{"Secret"}}}},
		{"granted by selector", "payments", labels.Set{"tier": "prod"}, []recipient{{Key: "cluster", Source: "generated", Generation: 2, Recipient: "age1east2", Kinds: []string{"Secret", "ConfigMap"}}}},
		{"labels unreadable: the selector grant may apply", "payments", nil, []recipient{{Key: "cluster", Source: "generated", Generation: 2, Recipient: "age1east2", Kinds: []string{"Secret", "ConfigMap"}, Maybe: true}}},
		{"granted nothing", "team-c", labels.Set{"tier": "dev"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, forNamespace(pub, tt.ns, tt.labels))
		})
	}
}

func TestNamesMatchTheWebhook(t *testing.T) {
	assert.Equal(t, mutate.AnnotationKeys, annotationKeys)
	assert.Equal(t, mutate.AnnotationRewrap, annotationRewrap)
	assert.Equal(t, mutate.RewrapDropRetired, rewrapDropRetired)
}

// The krew template renders, as krew-release-bot renders it, into a Plugin
// manifest named sops-webhook whose every platform installs the binary.
func TestKrewManifestRenders(t *testing.T) {
	raw, err := os.ReadFile("krew.yaml")
	require.NoError(t, err)
	tmpl, err := template.New("krew").Funcs(template.FuncMap{
		"addURIAndSha": func(uri, tag string) string {
			return "uri: " + strings.ReplaceAll(uri, "{{ .TagName }}", tag) + "\n      sha256: \"" + strings.Repeat("0", 64) + "\""
		},
	}).Parse(string(raw))
	require.NoError(t, err)
	var out bytes.Buffer
	require.NoError(t, tmpl.Execute(&out, map[string]string{"TagName": "v0.1.0"}))
	var plugin struct {
		Kind     string
		Metadata struct{ Name string }
		Spec     struct {
			Version   string
			Platforms []struct {
				URI, Sha256, Bin string
			}
		}
	}
	require.NoError(t, yaml.Unmarshal(out.Bytes(), &plugin), out.String())
	assert.Equal(t, "Plugin", plugin.Kind)
	assert.Equal(t, "sops-webhook", plugin.Metadata.Name, "kubectl sops-webhook")
	assert.Equal(t, "v0.1.0", plugin.Spec.Version)
	require.Len(t, plugin.Spec.Platforms, 4)
	for _, p := range plugin.Spec.Platforms {
		assert.Contains(t, p.URI, "/v0.1.0/kubectl-sops_webhook_")
		assert.Len(t, p.Sha256, 64)
		assert.Contains(t, p.Bin, "kubectl-sops_webhook")
	}
}
