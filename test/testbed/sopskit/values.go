package sopskit

import (
	"encoding/json"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// tokenTag finds a SOPS token's GCM tag.
var tokenTag = regexp.MustCompile(`tag:([A-Za-z0-9+/=]+)`)

// ValuesIndex is an independent Go implementation of the chart helper
// (charts/sops-webhook-values): it reads an encrypted values file as Helm
// does (through JSON) and returns the sops-webhook.io/values annotation the
// helper renders for it. Tests use it as an oracle for the helper and to
// build requests without running Helm.
func ValuesIndex(t testing.TB, encrypted []byte) string {
	t.Helper()
	var values map[string]any
	if err := yaml.Unmarshal(encrypted, &values); err != nil {
		t.Fatalf("parse values: %v", err)
	}
	paths := map[string]string{}
	for k, v := range values {
		if k != "sops" {
			walkValues(v, k+":", paths)
		}
	}
	out, err := json.Marshal(map[string]any{"sops": values["sops"], "paths": paths})
	if err != nil {
		t.Fatalf("marshal index: %v", err)
	}
	return string(out)
}

func walkValues(v any, path string, paths map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, c := range v {
			walkValues(c, path+k+":", paths)
		}
	case []any:
		for _, c := range v {
			walkValues(c, path, paths)
		}
	case string:
		if strings.HasPrefix(v, "ENC[AES256_GCM,data:") {
			if m := tokenTag.FindStringSubmatch(v); m != nil {
				paths[m[1]] = path
			}
		}
	}
}

// ValuesLeaf is one leaf of a values file: its sops path and value as read
// through JSON, the way Helm reads values.
type ValuesLeaf struct {
	Path  string
	Value any
}

// ValuesLeaves returns the leaves of a values file, sops metadata excluded,
// in a stable order. Applied to the encrypted and the decrypted file it pairs
// each token with its plain value (list items pair up by position).
func ValuesLeaves(t testing.TB, values []byte) []ValuesLeaf {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(values, &m); err != nil {
		t.Fatalf("parse values: %v", err)
	}
	delete(m, "sops")
	var out []ValuesLeaf
	var walk func(v any, path string)
	walk = func(v any, path string) {
		switch v := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				walk(v[k], path+k+":")
			}
		case []any:
			for _, c := range v {
				walk(c, path)
			}
		default:
			out = append(out, ValuesLeaf{Path: path, Value: v})
		}
	}
	walk(m, "")
	return out
}
