package testbed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// Helm runs one Helm CLI in isolation: its own config, cache and data
// directories, a throwaway HOME, and the given kubeconfig (may be empty for
// commands that need no cluster).
type Helm struct {
	// Name is "helm3" or "helm4", for test names.
	Name string
	bin  string
	env  []string
}

// HelmCLIs returns both Helm majors of the test bed, each isolated under a
// directory of t.
func HelmCLIs(t testing.TB, kubeconfig string) []*Helm {
	t.Helper()
	tools := sopskit.Need(t, "helm v3", func(t sopskit.Tools) string { return t.Helm3 })
	sopskit.Need(t, "helm v4", func(t sopskit.Tools) string { return t.Helm4 })
	return []*Helm{newHelm(t, "helm3", tools.Helm3, kubeconfig), newHelm(t, "helm4", tools.Helm4, kubeconfig)}
}

func newHelm(t testing.TB, name, bin, kubeconfig string) *Helm {
	home := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
	}
	if kubeconfig != "" {
		env = append(env, "KUBECONFIG="+kubeconfig)
	}
	return &Helm{Name: name, bin: bin, env: env}
}

// Run runs helm with args and returns its standard output; the error holds
// its standard error.
func (h *Helm) Run(args ...string) (string, error) {
	cmd := exec.Command(h.bin, args...)
	cmd.Env = h.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", h.Name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// MustRun is Run failing t on error.
func (h *Helm) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := h.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CopyFromRepo copies the repository paths (folders or files, relative to the
// repository root) into dst at the same relative paths, so that a chart's
// file:// dependencies still resolve.
func CopyFromRepo(dst string, paths ...string) error {
	root, err := sopskit.RepoRoot()
	if err != nil {
		return err
	}
	for _, p := range paths {
		src := filepath.Join(root, p)
		err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			target := filepath.Join(dst, rel)
			if d.IsDir() {
				return os.MkdirAll(target, 0o755)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, 0o644)
		})
		if err != nil {
			return fmt.Errorf("copy %s: %w", p, err)
		}
	}
	return nil
}

// Rendered is what `helm template` printed, by kind and name.
type Rendered struct {
	Secrets    map[string]*corev1.Secret
	ConfigMaps map[string]*corev1.ConfigMap
}

// ParseManifests parses a multi-document manifest stream into its Secrets
// and ConfigMaps; Secret stringData is folded into data as the API server
// does.
func ParseManifests(t testing.TB, manifests string) Rendered {
	t.Helper()
	out := Rendered{Secrets: map[string]*corev1.Secret{}, ConfigMaps: map[string]*corev1.ConfigMap{}}
	eachDocument(t, manifests, func(raw map[string]any) {
		switch raw["kind"] {
		case "Secret":
			var s corev1.Secret
			decodeInto(t, raw, &s)
			if s.Data == nil {
				s.Data = map[string][]byte{}
			}
			for k, v := range s.StringData {
				s.Data[k] = []byte(v)
			}
			s.StringData = nil
			out.Secrets[s.Name] = &s
		case "ConfigMap":
			var c corev1.ConfigMap
			decodeInto(t, raw, &c)
			out.ConfigMaps[c.Name] = &c
		}
	})
	return out
}

// eachDocument calls fn with every document of a manifest stream.
func eachDocument(t testing.TB, manifests string, fn func(map[string]any)) {
	t.Helper()
	dec := yaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return
			}
			t.Fatalf("parse manifests: %v", err)
		}
		if raw != nil {
			fn(raw)
		}
	}
}

func decodeInto(t testing.TB, raw map[string]any, into any) {
	t.Helper()
	b, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, into); err != nil {
		t.Fatalf("decode %v: %v", raw["kind"], err)
	}
}

// ParseObjectsByName is ParseObjects keyed by "Kind/name", for manifests
// with several objects of a kind.
func ParseObjectsByName(t testing.TB, manifests string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	eachDocument(t, manifests, func(raw map[string]any) {
		kind, _ := raw["kind"].(string)
		meta, _ := raw["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		if kind != "" {
			out[kind+"/"+name] = raw
		}
	})
	return out
}

// ParseObjects parses a multi-document manifest stream into generic objects
// by kind; a later object of the same kind replaces an earlier one.
func ParseObjects(t testing.TB, manifests string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	eachDocument(t, manifests, func(raw map[string]any) {
		if kind, ok := raw["kind"].(string); ok {
			out[kind] = raw
		}
	})
	return out
}
