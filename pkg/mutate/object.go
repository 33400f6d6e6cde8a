package mutate

import (
	"fmt"

	kjson "sigs.k8s.io/json"
)

// object is the part of a Secret or ConfigMap the mutation works on.
type object struct {
	kind        string
	namespace   string
	name        string
	annotations map[string]string
	fields      []field
	// helmRelease marks a Helm release record, which is never modified;
	// its fields are not read.
	helmRelease bool
	// old is the provenance record of the object an update replaces; empty
	// on a create.
	old provenance
}

func (o object) String() string {
	name := o.name
	if name == "" {
		name = "(generated name)"
	}
	return fmt.Sprintf("%s %s/%s", o.kind, o.namespace, name)
}

// provenance is what AnnotationDecrypted and AnnotationKeys say.
type provenance struct{ decrypted, keys string }

// provenanceJSON is an old object as the handler reads it: only the
// annotations the webhook writes, from which an update's record is merged.
// The rest is skipped unread. The tags are AnnotationDecrypted and
// AnnotationKeys (TestProvenanceTags).
type provenanceJSON struct {
	Metadata struct {
		Annotations struct {
			Decrypted string `json:"sops-webhook.io/decrypted"`
			Keys      string `json:"sops-webhook.io/keys"`
		} `json:"annotations"`
	} `json:"metadata"`
}

// oldObjectJSON is a review's old object: its provenance record, decoded
// only when its bytes name the annotations. An old object never makes a
// review fail: one that does not decode has no record.
type oldObjectJSON struct{ provenance }

func (o *oldObjectJSON) UnmarshalJSON(raw []byte) error {
	o.provenance = decodeProvenance(raw)
	return nil
}

// decodeProvenance reads the provenance record of raw, an old object; one
// that does not decode, or does not mention the annotations, has none.
func decodeProvenance(raw []byte) provenance {
	if !mentionsProvenance(raw) {
		return provenance{}
	}
	var p provenanceJSON
	if kjson.UnmarshalCaseSensitivePreserveInts(raw, &p) != nil {
		return provenance{}
	}
	a := p.Metadata.Annotations
	return provenance{decrypted: a.Decrypted, keys: a.Keys}
}
