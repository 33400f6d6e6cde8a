package store

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/config"
	sopsyaml "github.com/getsops/sops/v3/stores/yaml"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// sopsYAML is sops' own YAML store, the reference yamlEmitter must match.
var sopsYAML = func() *sopsyaml.Store {
	c := config.NewStoresConfig()
	return sopsyaml.NewStore(&c.YAML)
}()

// FuzzEmitYAML is the differential test of yamlEmitter against sops' own YAML
// emitter: for any YAML sops loads (comments included), decorated with
// comments and decrypted value types, both write the same bytes, or both
// fail.
func FuzzEmitYAML(f *testing.F) {
	for _, s := range []string{
		"a: 1\n", "# head\na: b # inline\n# foot\n",
		"a:\n  - 1\n  - 2.5\n  - true\n  - null\n  - ~\n  - \"\"\n  - 'x'\n  # in list\n  - [1, 2]\n  - {}\n# end\n",
		"multi: |\n  line one\n  line two\nfolded: >\n  a\n  b\nquoted: \"yes\"\nnum: \"0123\"\ntime: 2001-12-14t21:59:43.10-05:00\n",
		"unicode: héllo ☃ 😀\nkey with spaces: v\n'quoted key': v\n? complex\n: v\n",
		"a: 1\n---\nb: 2\n", "empty: {}\nlist: []\nnested: [[], [{}]]\n",
		"anchor: &x 1\nalias: *x\n", "big: 12345678901234567890\nhex: 0x1F\noct: 0o17\ninf: .inf\nnan: .nan\n",
		"# only a comment\n", "---\n# c\n",
	} {
		f.Add([]byte(s), uint64(1))
	}
	f.Fuzz(func(t *testing.T, in []byte, seed uint64) {
		branches, err := sopsYAML.LoadPlainFile(in)
		if err != nil {
			return
		}
		for i := range branches {
			branches[i] = decorate(branches[i], &seed).(sops.TreeBranch)
		}
		want, wantErr := emitSafely(sopsYAML.EmitPlainFile, branches)
		// The shipped store, and one that cuts a document after every
		// top-level entry it may.
		for name, ours := range map[string]yamlEmitter{"yamlEmitter": shippedYAML(t), "yamlEmitter in chunks of 1": everyEntry(t)} {
			got, gotErr := emitSafely(ours.emit, branches)
			if (wantErr != nil) != (gotErr != nil) {
				t.Fatalf("sops error %v, %s error %v", wantErr, name, gotErr)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s differs from sops:\n got %q\nwant %q", name, got, want)
			}
		}
	})
}

// TestEmitYAMLChunks checks that a document written in chunks of one
// top-level entry is what sops writes, for comments at every place one
// could leak into the next entry.
func TestEmitYAMLChunks(t *testing.T) {
	chunked := everyEntry(t)
	for name, in := range map[string]string{
		"foot comment in a nested mapping":   "a:\n  x: 1\n  # foot of x\nb: 2\n",
		"foot comment in a nested sequence":  "a:\n  - 1\n  # foot\nb: 2\n",
		"comment between top-level entries":  "a: 1\n# c\nb: 2\n",
		"foot comment two levels deep":       "a:\n  x:\n    y: 1\n    # deep\nb: 2\n",
		"nested foot, then a head comment":   "a:\n  x: 1\n  # foot\n# head b\nb: 2\n",
		"sequence of mappings with comments": "a:\n  - x: 1\n    # f\n  # g\nb: 2\nc: 3\n",
		"empty value, head comment inside":   "a: {}\n# f\nb:\n  # h\n  c: 1\n",
		"head, inline and foot comments":     "# head\na: 1 # inline\nb: 2\n# foot\n",
	} {
		t.Run(name, func(t *testing.T) {
			tree, err := sopsYAML.LoadPlainFile([]byte(in))
			require.NoError(t, err)
			want, err := sopsYAML.EmitPlainFile(tree)
			require.NoError(t, err)
			got, err := chunked.emit(tree)
			require.NoError(t, err)
			require.Equal(t, string(want), string(got))
		})
	}
}

// shippedYAML is the YAML emitter the Store uses.
func shippedYAML(t testing.TB) yamlEmitter {
	c := config.NewStoresConfig()
	e, err := newYAMLEmitter(&c.YAML)
	require.NoError(t, err)
	return e
}

// everyEntry is shippedYAML cutting a document after every top-level entry
// it may.
func everyEntry(t testing.TB) yamlEmitter {
	e := shippedYAML(t)
	e.chunk = 1
	return e
}

// emitSafely calls emit and turns a panic into an error: sops' emitter
// panics on some trees, and then ours must fail too.
func emitSafely(emit func(sops.TreeBranches) ([]byte, error), in sops.TreeBranches) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return emit(in)
}

// flatYAMLTree is a decrypted tree of n keys like the benchmark documents,
// with a comment every 100 keys.
func flatYAMLTree(n int) sops.TreeBranches {
	var branch sops.TreeBranch
	for i := range n {
		if i%100 == 0 {
			branch = append(branch, sops.TreeItem{Key: sops.Comment{Value: fmt.Sprintf(" section %d", i/100)}})
		}
		branch = append(branch, sops.TreeItem{Key: fmt.Sprintf("key%06d", i), Value: fmt.Sprintf("value-%06d-%s", i, strings.Repeat("x", 48))})
	}
	return sops.TreeBranches{branch}
}

// TestEmitYAMLIsLinear checks that the YAML Store writes what sops writes, that
// its allocations grow linearly, and that it allocates a fifth or less of
// what sops' own emitter does (without chunks it was 22 %). What is left is
// yaml's encoder and parser: every event of a call goes into one growing
// slice of large structs.
func TestEmitYAMLIsLinear(t *testing.T) {
	emit := func(tree sops.TreeBranches) (ours, theirs uint64, size int) {
		var want, got []byte
		var err error
		theirs = allocated(func() { want, err = sopsYAML.EmitPlainFile(tree) })
		require.NoError(t, err)
		ours = allocated(func() { got, err = YAML.Emit(tree, 0) })
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
		return ours, theirs, encryptedSize(len(got))
	}
	a, _, _ := emit(flatYAMLTree(1000))
	b, sops, size := emit(flatYAMLTree(8000))
	t.Logf("1,000 keys: %d bytes allocated; 8,000 keys: %d bytes (%.1f×), %.1f× the encrypted size; sops: %.1f×",
		a, b, float64(b)/float64(a), float64(b)/float64(size), float64(sops)/float64(size))
	require.Less(t, float64(b)/float64(a), 12.0, "allocations grow faster than the input")
	require.Less(t, float64(b), float64(sops)/5, "allocations are not a fifth of sops' own")
}

// TestIsWord checks, for every string of one or two characters of the
// word alphabet and for the words YAML reads as something else, that a
// string isWord accepts gets exactly the node yaml.Node.Encode makes.
func TestIsWord(t *testing.T) {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~ "
	candidates := []string{"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
		"true", "True", "TRUE", "false", "False", "FALSE", "null", "Null", "NULL", "inf", "Inf", "nan", "NaN", "Infinity",
		"e5", "x1", "key000001", "value-000001-xxx", "a-b_c", "yess", "nulls", "_x", "-x", "0x1F"}
	for _, a := range alphabet {
		candidates = append(candidates, string(a))
		for _, b := range alphabet {
			candidates = append(candidates, string(a)+string(b))
		}
	}
	accepted := 0
	for _, s := range candidates {
		if !isWord(s) {
			continue
		}
		accepted++
		var want yaml.Node
		require.NoError(t, want.Encode(s))
		require.Equal(t, yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}, want, "%q", s)
	}
	for _, s := range []string{"y", "No", "ON", "off", "True", "FALSE", "null", "-x", "_x", "0x1F", "a.b", ""} {
		require.False(t, isWord(s), "%q", s)
	}
	t.Logf("%d of %d strings are words", accepted, len(candidates))
}
