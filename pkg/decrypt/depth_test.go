package decrypt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// nested is a plaintext whose maps and lists nest depth deep: its
// top-level map, then depth-1 lists, in format ("yaml" or "json").
func nested(format string, depth int) []byte {
	lists := strings.Repeat("[", depth-1) + `"x"` + strings.Repeat("]", depth-1)
	if format == "json" {
		return []byte(`{"k":` + lists + `}`)
	}
	return []byte("k: " + lists + "\n")
}

// TestDocumentDepth requires documents nested MaxDocumentDepth deep to be
// decrypted, and deeper ones to be refused as too large before their
// plaintext is written: sops prints each level indented one step more, so
// a compact document nested thousands deep printed hundreds of megabytes.
func TestDocumentDepth(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	d := newDecryptor(t, loadAge(t, "k", key))
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	for _, tt := range []struct {
		format string
		f      decrypt.Format
	}{{"yaml", decrypt.FormatYAML}, {"json", decrypt.FormatJSON}} {
		t.Run(tt.format+"/as deep as accepted", func(t *testing.T) {
			res, err := d.Document(context.Background(), sopskit.SopsEncrypt(t, nested(tt.format, decrypt.MaxDocumentDepth), tt.format, r), tt.f, nil)
			require.NoError(t, err)
			assert.Contains(t, string(res.Plaintext), "x")
		})
		t.Run(tt.format+"/one level deeper", func(t *testing.T) {
			_, err := d.Document(context.Background(), sopskit.SopsEncrypt(t, nested(tt.format, decrypt.MaxDocumentDepth+1), tt.format, r), tt.f, nil)
			require.True(t, decrypt.IsReason(err, decrypt.ReasonTooLarge), "got %v", err)
			assert.Contains(t, err.Error(), "nest more than 32 levels deep")
		})
	}
	t.Run("json/2,000 deep, written compactly", func(t *testing.T) {
		// Valid: the MAC covers the values, not the blanks between them.
		var doc bytes.Buffer
		require.NoError(t, json.Compact(&doc, sopskit.SopsEncrypt(t, nested("json", 2000), "json", r)))
		require.Less(t, doc.Len(), 10<<10)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := d.Document(context.Background(), doc.Bytes(), decrypt.FormatJSON, nil)
		runtime.ReadMemStats(&after)
		require.True(t, decrypt.IsReason(err, decrypt.ReasonTooLarge), "got %v", err)
		// Written out, it would print 2 MB of tabs.
		assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20))
	})
}
