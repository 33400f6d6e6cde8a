package store

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/config"
	sopsjson "github.com/getsops/sops/v3/stores/json"
	"github.com/stretchr/testify/require"
)

// sopsJSON is sops' own JSON store, the reference emitJSON must match.
var sopsJSON = func() *sopsjson.Store {
	c := config.NewStoresConfig()
	return sopsjson.NewStore(&c.JSON)
}()

// decorate makes a tree look like a decrypted one, driven by seed: some
// mapping items and list items get a comment before them, and some strings
// become []byte (a value tagged type:bytes) or sops.Comment (in lists).
func decorate(v any, seed *uint64) any {
	next := func() uint64 {
		*seed = *seed*6364136223846793005 + 1442695040888963407
		return *seed >> 60
	}
	switch v := v.(type) {
	case sops.TreeBranch:
		var out sops.TreeBranch
		for _, item := range v {
			if next() == 0 {
				out = append(out, sops.TreeItem{Key: sops.Comment{Value: " a comment"}, Value: nil})
			}
			out = append(out, sops.TreeItem{Key: item.Key, Value: decorate(item.Value, seed)})
		}
		return out
	case []any:
		var out []any
		for _, item := range v {
			if next() == 1 {
				out = append(out, sops.Comment{Value: "in a list"})
			}
			out = append(out, decorate(item, seed))
		}
		return out
	case string:
		if next() == 2 {
			return []byte(v)
		}
	}
	return v
}

// FuzzEmitJSON is the differential test of emitJSON against sops' own JSON
// emitter: for any JSON object sops loads, decorated with comments and
// decrypted value types, both write the same bytes, or both fail.
func FuzzEmitJSON(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, `{"a":{"b":[1,2.5,-3e10,true,false,null,"x"]}}`,
		`{"empty":{},"list":[],"nested":[[],[{}],[[1]]]}`,
		`{"unicode":"héllo wörld ☃ \u2028 \u2029 \ud83d\ude00","html":"<a href=\"x\">&amp;</a>"}`,
		`{"big":12345678901234567890,"small":-9223372036854775808,"frac":0.1,"exp":1E400}`,
		`{"dup":1,"dup":2,"":"empty key","tab\tkey":"new\nline"}`,
		`{"bad utf8":"\xff\xfe"}`,
	} {
		f.Add([]byte(s), uint64(1))
	}
	f.Fuzz(func(t *testing.T, in []byte, seed uint64) {
		branches, err := sopsJSON.LoadPlainFile(in)
		if err != nil {
			return
		}
		branches[0] = decorate(branches[0], &seed).(sops.TreeBranch)
		want, wantErr := sopsJSON.EmitPlainFile(branches)
		got, gotErr := emitJSON(branches, "\t", int(seed%4096))
		if (wantErr != nil) != (gotErr != nil) {
			t.Fatalf("sops error %v, emitJSON error %v", wantErr, gotErr)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("emitJSON differs from sops:\n got %q\nwant %q", got, want)
		}
	})
}

// TestEmitJSONIndent checks sops' indentation rule: a tab for -1, spaces
// otherwise, and an error below -1.
func TestEmitJSONIndent(t *testing.T) {
	tree := sops.TreeBranches{{{Key: "a", Value: sops.TreeBranch{{Key: "b", Value: 1}}}}}
	for _, n := range []int{-1, 0, 2, 4} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			want, err := sopsjson.NewStore(&config.JSONStoreConfig{Indent: n}).EmitPlainFile(tree)
			require.NoError(t, err)
			indent, err := jsonIndent(n)
			require.NoError(t, err)
			got, err := emitJSON(tree, indent, 0)
			require.NoError(t, err)
			require.Equal(t, string(want), string(got))
		})
	}
	_, err := jsonIndent(-2)
	require.Error(t, err)
}

// flatJSONTree is a decrypted tree of n keys like the benchmark documents.
func flatJSONTree(n int) sops.TreeBranches {
	branch := make(sops.TreeBranch, n)
	for i := range branch {
		branch[i] = sops.TreeItem{Key: fmt.Sprintf("key%06d", i), Value: fmt.Sprintf("value-%06d-%s", i, strings.Repeat("x", 48))}
	}
	return sops.TreeBranches{branch}
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// encryptedSize is about what sops makes of a plaintext of n bytes: every
// value becomes an ENC[...] token (see expansion in bench_test.go).
func encryptedSize(n int) int { return n * 28 / 10 }

// TestEmitJSONIsLinear checks that emitJSON's allocations grow linearly:
// eight times the keys allocate about eight times the bytes (sops' own
// emitter allocates about sixty times as much), and with the encrypted
// size as its hint the total stays within twice that size.
func TestEmitJSONIsLinear(t *testing.T) {
	emit := func(tree sops.TreeBranches) (allocs uint64, hint int) {
		want, err := sopsJSON.EmitPlainFile(tree)
		require.NoError(t, err)
		hint = encryptedSize(len(want))
		var got []byte
		allocs = allocated(func() { got, err = emitJSON(tree, "\t", hint) })
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
		return allocs, hint
	}
	a, _ := emit(flatJSONTree(1000))
	b, hint := emit(flatJSONTree(8000))
	t.Logf("1,000 keys: %d bytes allocated; 8,000 keys: %d bytes (%.1f×), %.2f× the encrypted size", a, b, float64(b)/float64(a), float64(b)/float64(hint))
	require.Less(t, float64(b)/float64(a), 10.0, "allocations grow faster than the input")
	require.Less(t, float64(b)/float64(hint), 2.0, "allocations are not within twice the encrypted size")
}
