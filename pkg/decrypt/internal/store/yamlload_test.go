package store

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/getsops/sops/v3"
	"github.com/stretchr/testify/require"
)

// yamlLoadSeeds are YAML inputs around what sops' loader checks and
// keeps: comments everywhere, tags, merge keys, duplicate and complex
// keys, empty and several documents.
var yamlLoadSeeds = []string{
	"a: 1\n", "# head\na: b # inline\n# foot\n",
	"a:\n  - 1\n  - 2.5\n  - true\n  - null\n  - ~\n  - \"\"\n  - 'x'\n  # in list\n  - [1, 2]\n  - {}\n# end\n",
	"multi: |\n  line one\n  line two\nfolded: >\n  a\n  b\nquoted: \"yes\"\nnum: \"0123\"\ntime: 2001-12-14t21:59:43.10-05:00\n",
	"unicode: héllo ☃ 😀\nkey with spaces: v\n'quoted key': v\n? complex\n: v\n",
	"a: 1\n---\nb: 2\n", "empty: {}\nlist: []\nnested: [[], [{}]]\n",
	"big: 12345678901234567890\nhex: 0x1F\noct: 0o17\ninf: .inf\nnan: .nan\n",
	"# only a comment\n", "---\n# c\n", "", "\n", "---\n", "--- ~\n", "--- !!null x\n", "[a]\n", "x\n",
	"a: 1\na: 2\n", "a: 1\n'a': 2\n", "1: x\n\"1\": y\n", "a:\n  b: 1\n  b: 2\n", "a: 1\n---\nb: 1\nb: 2\n",
	"? [a]\n: 1\n", "a:\n  ? {b: c}\n  : 1\n", "a: {? [x] : 1}\n",
	"a: !!int x\n", "a: !!binary '###'\n", "a: !!float 1\n", "a: !!bool yes\n", "a: !!timestamp x\n", "!!int k: v\n",
	"a: !custom x\n", "a: !!str 1\n", "a: !!null ''\n", "a: !!map {}\n", "a: !!str {b: c}\n", "---\na: !!int x\n",
	"<<: {a: 1}\nb: 2\n", "<<: [{a: 1}, {b: 2}]\n", "<<: 1\n", "<<: [1]\n", "'<<': 1\n", "a:\n  <<: x\n", "!!merge <<: {a: 1}\n",
	"a: # c1\n  # c2\n  b: c # c3\n  # c4\n# c5\nd:\n  # c6\n  - e # c7\n  # c8\n",
	"~: a\nnull: b\n", "? |\n  block key\n: v\n",
}

// FuzzLoadYAML is the differential test of loadYAML against sops' own
// YAML loader: for any input without an alias, both fail, or both load the
// same tree. An input with an alias is refused with ErrAlias.
func FuzzLoadYAML(f *testing.F) {
	for _, s := range yamlLoadSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("a: &x 1\nb: *x\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, gotErr := loadYAML(in)
		if errors.Is(gotErr, ErrAlias) {
			// sops would expand it, without bound.
			return
		}
		want, wantErr := sopsYAML.LoadPlainFile(in)
		if (wantErr != nil) != (gotErr != nil) {
			t.Fatalf("sops error %v, ours %v", wantErr, gotErr)
		}
		if !sameTree(got, want) {
			t.Fatalf("tree differs from sops':\n got %#v\nwant %#v", got, want)
		}
	})
}

// sameTree is reflect.DeepEqual, but for a NaN, which equals a NaN.
func sameTree(a, b any) bool {
	switch a := a.(type) {
	case sops.TreeBranches:
		b, ok := b.(sops.TreeBranches)
		return ok && (a == nil) == (b == nil) && sameList(len(a), len(b), func(i int) bool { return sameTree(a[i], b[i]) })
	case sops.TreeBranch:
		b, ok := b.(sops.TreeBranch)
		return ok && (a == nil) == (b == nil) && sameList(len(a), len(b), func(i int) bool { return sameTree(a[i], b[i]) })
	case sops.TreeItem:
		b, ok := b.(sops.TreeItem)
		return ok && sameTree(a.Key, b.Key) && sameTree(a.Value, b.Value)
	case []any:
		b, ok := b.([]any)
		return ok && (a == nil) == (b == nil) && sameList(len(a), len(b), func(i int) bool { return sameTree(a[i], b[i]) })
	case float64:
		b, ok := b.(float64)
		return ok && (a == b || math.IsNaN(a) && math.IsNaN(b))
	}
	return reflect.DeepEqual(a, b)
}

func sameList(m, n int, same func(int) bool) bool {
	if m != n {
		return false
	}
	for i := range m {
		if !same(i) {
			return false
		}
	}
	return true
}

// TestLoadYAMLHostile loads small documents that cost sops' own loader
// gigabytes, and requires each to be refused, or loaded, allocating a small
// multiple of its size. sops' loader allocates 810 MB for the 3,000 equal
// keys (yaml writes an error line for every pair) and expands each alias.
func TestLoadYAMLHostile(t *testing.T) {
	bomb := func(levels int, second bool) []byte {
		var b strings.Builder
		b.WriteString("sops:\n    mac: x\na: b\n")
		if second {
			b.WriteString("---\n")
		}
		b.WriteString("l0: &l0 [a, b, c, d, e, f, g, h, i]\n")
		for i := 1; i < levels; i++ {
			fmt.Fprintf(&b, "l%d: &l%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d,", i-1), 9), ","))
		}
		return []byte(b.String())
	}
	var distinct strings.Builder
	for i := range 50_000 {
		fmt.Fprintf(&distinct, "  k%d: v\n", i)
	}
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"aliases, 9^6 values in the second document", bomb(6, true), ErrAlias.Error()},
		{"aliases, 9^6 values in the first document", bomb(6, false), ErrAlias.Error()},
		{"one alias", []byte("a: &x 1\nb: *x\n"), ErrAlias.Error()},
		{"3,000 equal keys", []byte("k:\n" + strings.Repeat("  a: b\n", 3000)), "defined twice"},
		{"50,000 distinct keys", []byte("k:\n" + distinct.String()), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := loadYAML(tt.in)
			runtime.ReadMemStats(&after)
			if tt.wantErr == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tt.wantErr)
			}
			allocated := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d bytes, %d allocated", len(tt.in), allocated)
			// yaml's parser costs about 8 KiB to start.
			require.Less(t, allocated, uint64(200*len(tt.in)+64<<10), "allocated more than 200 bytes per byte of input")
		})
	}
}
