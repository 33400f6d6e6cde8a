package decrypt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sigsyaml "sigs.k8s.io/yaml"
)

func TestItems(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"", 0},
		{"a: b\n", 3},
		{"a: b", 3},
		{"- a\n- b\n", 6},
		{"-\n", 3},
		{"a-b: c-d\n", 3},
		{"? a\n: b\n", 6},
		{"a: [1, 2, {b: c}] # x\n", 9},
		{`{"a":[0,0]}`, 6},
		{"k: ENC[AES256_GCM,data:eA==,iv:AA==,tag:AA==,type:str]\n", 4},
		{"k: ENC[AES256_GCM,data:eA==,iv:AA==,tag:AA==,type:str\n", 12},
		{"k: ENC[AES256_GCM,data:e,a,a,a,iv:AA==,tag:AA==,type:str]\n", 15},
		{"k: [ENC[AES256_GCM,data:,iv:a,tag:a,type:s],ENC[AES256_GCM,data:,iv:a,tag:a,type:s]]\n", 7},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, decrypt.Items([]byte(tt.in)), "%q", tt.in)
	}
}

// denseDocument repeats unit after head until the document counts about
// items items.
func denseDocument(head, unit, tail string, items int) []byte {
	per := decrypt.Items([]byte(unit+unit)) - decrypt.Items([]byte(unit))
	return []byte(head + strings.Repeat(unit, (items-decrypt.Items([]byte(head+tail)))/per) + tail)
}

// TestItemCost requires the densest documents known, in every format, to
// allocate less than decrypt.ItemCost per item in all, so that weighing a
// payload by its items bounds its memory. Most are refused once parsed
// (they name no key, or thousands of master keys); the YAML list of
// unencrypted values is a valid document, decrypted and written out. A
// document over the cap is refused before it is parsed.
func TestItemCost(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	d := newDecryptor(t, loadAge(t, "k", key))
	enc := "ENC[AES256_GCM,data:eA==,iv:AAAAAAAAAAAAAAAAAAAAAA==,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]"
	yamlHead := "sops:\n    mac: x\n    lastmodified: \"2024-01-01T00:00:00Z\"\nk0: " + enc + "\n"
	jsonHead := `{"sops":{"mac":"x","lastmodified":"2024-01-01T00:00:00Z"},"k0":"` + enc + `",`
	const items = decrypt.MaxDocumentItems - 100

	// A valid document: sops writes the list in block style; written as a
	// flow list it holds the same values, so its MAC still holds.
	n := 30_000
	plain := "secret: s3cr3t\nlist_unencrypted:\n" + strings.Repeat("    - a\n", n)
	valid := sopskit.SopsEncrypt(t, []byte(plain), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}}, "--unencrypted-suffix", "_unencrypted")
	block := strings.Repeat("    - a\n", n)
	require.Contains(t, string(valid), block)
	flow := bytes.Replace(valid, []byte(":\n"+block), []byte(": ["+strings.TrimSuffix(strings.Repeat("a,", n), ",")+"]\n"), 1)

	tests := []struct {
		name   string
		format decrypt.Format
		doc    []byte
		valid  bool
	}{
		{"YAML flow list", decrypt.FormatYAML, denseDocument(yamlHead+"k: [", "a,", "a]\n", items), false},
		{"YAML flow mappings", decrypt.FormatYAML, denseDocument(yamlHead+"k: [", "{},", "{}]\n", items), false},
		{"YAML block list", decrypt.FormatYAML, denseDocument(yamlHead+"k:\n", "- a\n", "", items), false},
		{"YAML nested lists", decrypt.FormatYAML, denseDocument(yamlHead+"k:\n", "- - - - a\n", "", items), false},
		{"YAML comments", decrypt.FormatYAML, denseDocument(yamlHead, "#\n", "", items), false},
		{"YAML keys", decrypt.FormatYAML, denseDocument(yamlHead+"k: {", "a,", "a}\n", items), false},
		{"YAML valid flow list", decrypt.FormatYAML, flow, true},
		{"YAML valid flow list, nested as deep as accepted", decrypt.FormatYAML, nestedList(t, key, "yaml", decrypt.MaxDocumentDepth, n/2, false), true},
		{"YAML valid flow map", decrypt.FormatYAML, nestedList(t, key, "yaml", 2, n/2, true), true},
		{"YAML valid flow map, nested as deep as accepted", decrypt.FormatYAML, nestedList(t, key, "yaml", decrypt.MaxDocumentDepth, n/2, true), true},
		{"JSON valid list, compact, nested as deep as accepted", decrypt.FormatJSON, nestedList(t, key, "json", decrypt.MaxDocumentDepth, n/2, false), true},
		{"JSON valid map, compact, nested as deep as accepted", decrypt.FormatJSON, nestedList(t, key, "json", decrypt.MaxDocumentDepth, n/2, true), true},
		{"YAML age recipients", decrypt.FormatYAML, denseDocument("k0: "+enc+"\nsops:\n    mac: x\n    lastmodified: \"2024-01-01T00:00:00Z\"\n    age:\n", "        - {recipient: a, enc: b}\n", "", items), false},
		{"YAML PGP keys", decrypt.FormatYAML, denseDocument("k0: "+enc+"\nsops:\n    mac: x\n    lastmodified: \"2024-01-01T00:00:00Z\"\n    pgp:\n", "        - {fp: a, enc: b, created_at: c}\n", "", items), false},
		{"YAML key groups", decrypt.FormatYAML, denseDocument("k0: "+enc+"\nsops:\n    mac: x\n    lastmodified: \"2024-01-01T00:00:00Z\"\n    key_groups:\n", "        - age: [{recipient: a, enc: b}]\n", "", items), false},
		{"JSON array", decrypt.FormatJSON, denseDocument(jsonHead+`"k":[`, "0,", "0]}", items), false},
		{"JSON objects", decrypt.FormatJSON, denseDocument(jsonHead+`"k":[`, "{},", "{}]}", items), false},
		{"dotenv", decrypt.FormatDotenv, denseDocument("sops_mac=x\nk0="+enc+"\n", "a=\n", "", items), false},
		{"INI sections", decrypt.FormatINI, denseDocument("[sops]\nmac=x\n[s]\nk0="+enc+"\n", "[a]\n", "", decrypt.MaxINIItems-100), false},
		{"INI keys", decrypt.FormatINI, []byte(fmt.Sprintf("[sops]\nmac=x\n[s]\nk0=%s\n%s", enc, keys(decrypt.MaxINIItems/2-100))), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := decrypt.Items(tt.doc)
			require.LessOrEqual(t, n, decrypt.MaxDocumentItems)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			res, err := d.Document(context.Background(), tt.doc, tt.format, nil)
			runtime.ReadMemStats(&after)
			if tt.valid {
				require.NoError(t, err)
				require.Contains(t, string(res.Plaintext), "s3cr3t")
			} else {
				require.Error(t, err)
				require.NotContains(t, err.Error(), "its structure counts", "refused by the cap, unparsed")
			}
			perItem := float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
			t.Logf("%d bytes, %d items: %.0f bytes allocated per item", len(tt.doc), n, perItem)
			assert.Less(t, perItem, float64(decrypt.ItemCost))
		})
	}
	t.Run("over the cap", func(t *testing.T) {
		doc := denseDocument(yamlHead+"k: [", "a,", "a]\n", decrypt.MaxDocumentItems+10)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := d.Document(context.Background(), doc, decrypt.FormatYAML, nil)
		runtime.ReadMemStats(&after)
		require.True(t, decrypt.IsReason(err, decrypt.ReasonTooLarge), "got %v", err)
		assert.Contains(t, err.Error(), "limited to 65536")
		assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<10), "parsed before it was refused")
	})
}

// nestedList is a valid document in format ("yaml" or "json") whose maps
// and lists nest depth deep: maps down to a list (or, if mapping, a map) of
// n unencrypted one-letter values, written compactly (a YAML flow
// collection, JSON without blanks), which holds the same values as what
// sops writes, so its MAC holds. sops prints each value on a line of its
// own, indented depth steps.
func nestedList(t *testing.T, key sopskit.AgeKey, format string, depth, n int, mapping bool) []byte {
	t.Helper()
	entry := func(i int) string { return "- a" }
	open, end := "[", "]"
	if mapping {
		entry = func(i int) string { return fmt.Sprintf("k%d: a", i) }
		open, end = "{", "}"
	}
	var plain, block, flow strings.Builder
	plain.WriteString("secret: s3cr3t\n")
	for level := 1; level < depth-1; level++ {
		fmt.Fprintf(&plain, "%sk%d:\n", strings.Repeat("  ", level-1), level)
	}
	fmt.Fprintf(&plain, "%scollection_unencrypted:\n", strings.Repeat("  ", depth-2))
	for i := range n {
		fmt.Fprintf(&plain, "%s%s\n", strings.Repeat("  ", depth-1), entry(i))
	}
	in := []byte(plain.String())
	if format == "json" {
		var err error
		in, err = sigsyaml.YAMLToJSON(in)
		require.NoError(t, err)
	}
	enc := sopskit.SopsEncrypt(t, in, format, sopskit.Recipients{Age: []sopskit.AgeKey{key}}, "--unencrypted-suffix", "_unencrypted")
	if format == "json" {
		var compact bytes.Buffer
		require.NoError(t, json.Compact(&compact, enc))
		return compact.Bytes()
	}
	// sops writes the collection in block style, an entry a line at one
	// indentation; the same entries in flow style hold the same values.
	head := []byte("collection_unencrypted:\n")
	i := bytes.Index(enc, head)
	require.GreaterOrEqual(t, i, 0)
	rest := enc[i+len(head):]
	indent := rest[:bytes.IndexAny(rest, "-k")]
	for j := range n {
		fmt.Fprintf(&block, "%s%s\n", indent, entry(j))
		if j > 0 {
			flow.WriteString(",")
		}
		flow.WriteString(strings.TrimPrefix(entry(j), "- "))
	}
	require.True(t, bytes.HasPrefix(rest, []byte(block.String())), "sops wrote the collection in block style")
	return bytes.Replace(enc, append(head, block.String()...), []byte("collection_unencrypted: "+open+flow.String()+end+"\n"), 1)
}

// keys is n INI lines of distinct keys.
func keys(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "k%d=\n", i)
	}
	return b.String()
}
