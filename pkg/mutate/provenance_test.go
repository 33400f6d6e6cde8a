package mutate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"gomodules.xyz/jsonpatch/v2"
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

// TestProvenanceKeysOnUpdate: the keys of the replaced object's record stay
// only while a field it covers was not decrypted again, since the record
// names keys per object; a field decrypted again by a new generation
// leaves the old one out.
func TestProvenanceKeysOnUpdate(t *testing.T) {
	fields := []field{{section: "data", key: "a", binary: true}, {section: "data", key: "b", binary: true}}
	tests := []struct {
		name      string
		old       provenance
		decrypted []string
		keys      []string
		want      string
	}{
		{"every field decrypted again", provenance{"data.a,data.b", "k@1"}, []string{"data.a", "data.b"}, []string{"k@2"}, "k@2"},
		{"one field kept from before", provenance{"data.a,data.b", "k@1"}, []string{"data.a"}, []string{"k@2"}, "k@1,k@2"},
		{"a create", provenance{}, []string{"data.a"}, []string{"k@2"}, "k@2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mutation{decrypted: tt.decrypted, keys: tt.keys}
			for _, p := range tt.decrypted {
				m.ops = append(m.ops, jsonpatch.NewOperation("replace", "/"+strings.ReplaceAll(p, ".", "/"), "x"))
			}
			var got string
			for _, op := range m.finish(object{kind: "Secret", fields: fields, old: tt.old, annotations: map[string]string{}}) {
				if v, ok := op.Value.(map[string]string); ok {
					got = v[AnnotationKeys]
				} else if op.Path == annotationPointer(AnnotationKeys) {
					got, _ = op.Value.(string)
				}
			}
			assert.Equal(t, tt.want, got)
		})
	}
}
