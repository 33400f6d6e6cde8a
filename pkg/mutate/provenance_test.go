package mutate

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestProvenanceTags checks that the old object's record is read under the
// annotation names the webhook writes, case-sensitively, and that an old
// object that does not decode has no record.
func TestProvenanceTags(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want provenance
	}{
		{"the record", fmt.Sprintf(`{"metadata":{"annotations":{%q:"data.a",%q:"k","other":"x"}}}`, AnnotationDecrypted, AnnotationKeys), provenance{"data.a", "k"}},
		{"names differ in case", `{"metadata":{"annotations":{"SOPS-webhook.io/decrypted":"data.a","sops-webhook.io/Keys":"k"}}}`, provenance{}},
		{"not an object", fmt.Sprintf(`{"metadata":[%q]}`, AnnotationDecrypted), provenance{}},
		{"no record", `{"metadata":{"annotations":{"other":"x"}}}`, provenance{}},
		{"empty", ``, provenance{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, decodeProvenance([]byte(tt.raw)))
		})
	}
}
