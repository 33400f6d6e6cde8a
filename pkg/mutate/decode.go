package mutate

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"reflect"

	kjson "sigs.k8s.io/json"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
)

// object is the part of a Secret or ConfigMap the mutation works on.
type object struct {
	kind        string
	namespace   string
	name        string
	annotations map[string]string
	fields      []field
	// old is the provenance record of the object an update replaces; empty
	// on a create.
	old provenance
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

// mentionsProvenance reports whether raw may carry the annotations only
// the webhook writes, which it must then check even without SOPS content.
func mentionsProvenance(raw []byte) bool {
	return bytes.Contains(raw, quotedDecrypted) || bytes.Contains(raw, quotedKeys)
}

// AnnotationDecrypted and AnnotationKeys as JSON strings.
var (
	quotedDecrypted = []byte(`"` + AnnotationDecrypted + `"`)
	quotedKeys      = []byte(`"` + AnnotationKeys + `"`)
)

func (o object) String() string {
	name := o.name
	if name == "" {
		name = "(generated name)"
	}
	return fmt.Sprintf("%s %s/%s", o.kind, o.namespace, name)
}

// binaryDataKey is how a ConfigMap's base64 section appears in its JSON.
var binaryDataKey = []byte(`"binaryData"`)

// mayHoldBase64 reports whether an object can carry base64 values: every
// Secret, and a ConfigMap only with binaryData. It spares a ConfigMap of
// text the base64 marker scans.
func mayHoldBase64(kind string, raw []byte) bool {
	return kind == "Secret" || bytes.Contains(raw, binaryDataKey)
}

// mayHoldSOPS is the screen before anything is decoded: it reports whether
// raw, an object or a whole review, holds a SOPS marker in plain text (as in
// ConfigMap data and a values index) or, when withBase64, in base64 (as in
// Secret data and ConfigMap binaryData). False means raw certainly holds no
// SOPS content.
func mayHoldSOPS(raw []byte, withBase64 bool) bool {
	return decrypt.HasMarker(raw) || withBase64 && decrypt.MayHoldBase64Marker(raw)
}

// objectJSON is the part of a Secret or ConfigMap the handler reads, decoded
// in one pass whichever the kind: Secret data arrives as base64 text and is
// decoded by object. Decoding into this rather than the full API types
// skips managedFields, owner references and the rest, which on an UPDATE
// can be larger than the data.
type objectJSON struct {
	Metadata struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	// Type is a Secret's.
	Type string            `json:"type"`
	Data map[string]string `json:"data"`
	// BinaryData is a ConfigMap's.
	BinaryData map[string][]byte `json:"binaryData"`
}

// MaxObjectKeys caps the members of any JSON object in a review whose
// object the webhook decodes, which it does only for reviews with SOPS
// content: an object's data, binaryData and annotations among them.
// Decoding a map costs about 200 bytes per entry, so a 3 MiB request of
// one-letter keys would hold 20 times its size; 8,192 entries cost under
// 2 MiB.
const MaxObjectKeys = 8192

// errTooManyKeys is the decoding error of a review with a JSON object of
// more than MaxObjectKeys members.
var errTooManyKeys = fmt.Errorf("a map holds more than %d entries (mutate.MaxObjectKeys)", MaxObjectKeys)

// checkMembers returns errTooManyKeys if a JSON object in b, valid JSON or
// not, has more than MaxObjectKeys members, counted by their colons
// outside strings. It reads only bodies the body gate takes for large
// (over budget.SmallWeight): a smaller one holds under 11,000 members of
// six bytes (`"":"",`), about 2 MiB decoded.
func checkMembers(b []byte) error {
	if len(b) <= budget.SmallWeight {
		return nil
	}
	// members[d] counts the colons of the object open at depth d.
	members := make([]int, 0, 16)
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			end := closingQuote(b, i+1)
			if end < 0 {
				return nil
			}
			i = end
		case '{', '[':
			members = append(members, 0)
		case '}', ']':
			if len(members) > 0 {
				members = members[:len(members)-1]
			}
		case ':':
			if len(members) == 0 {
				continue
			}
			if members[len(members)-1]++; members[len(members)-1] > MaxObjectKeys {
				return errTooManyKeys
			}
		}
	}
	return nil
}

// closingQuote returns the index of the quote that ends the JSON string
// whose text starts at b[from], or -1.
func closingQuote(b []byte, from int) int {
	for from < len(b) {
		k := bytes.IndexByte(b[from:], '"')
		if k < 0 {
			return -1
		}
		at := from + k
		escapes := 0
		for j := at - 1; j >= from && b[j] == '\\'; j-- {
			escapes++
		}
		if escapes%2 == 0 {
			return at
		}
		from = at + 1
	}
	return -1
}

// decodeObject decodes raw, a Secret or ConfigMap, as the API server does:
// field names match case-sensitively. skip is non-empty when the object is
// one the webhook never touches.
func decodeObject(kind string, raw []byte) (obj object, skip string, err error) {
	if err := checkMembers(raw); err != nil {
		return object{}, "", fmt.Errorf("decode %s: %w", kind, err)
	}
	var o objectJSON
	if err := kjson.UnmarshalCaseSensitivePreserveInts(raw, &o); err != nil {
		return object{}, "", fmt.Errorf("decode %s: %s", kind, describeJSONError(err))
	}
	return o.object(kind)
}

// object returns o as the kind it was sent as; errors name the field and
// never quote a value.
func (o *objectJSON) object(kind string) (obj object, skip string, err error) {
	m := o.Metadata
	obj = object{kind: kind, namespace: m.Namespace, name: m.Name, annotations: m.Annotations}
	if kind != "Secret" {
		obj.fields = configMapFields(o.Data, o.BinaryData)
		return obj, "", nil
	}
	if o.Type == HelmReleaseSecretType {
		return object{}, "Helm release records are never modified", nil
	}
	data := make(map[string][]byte, len(o.Data))
	for k, v := range o.Data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return object{}, "", fmt.Errorf("decode Secret: field data.%s is not base64", k)
		}
		data[k] = b
	}
	obj.fields = secretFields(data)
	return obj, "", nil
}

// describeJSONError says where and why JSON could not be decoded without
// quoting the input, which may hold plaintext: encoding/json's syntax
// errors quote the offending character.
func describeJSONError(err error) string {
	if errors.Is(err, errTooManyKeys) {
		return errTooManyKeys.Error()
	}
	if ok, offset := kjson.SyntaxErrorOffset(err); ok {
		return fmt.Sprintf("not valid JSON (at byte %d)", offset)
	}
	if field := typeErrorField(err); field != "" {
		return "field " + field + " holds a value of the wrong JSON type"
	}
	return "not valid JSON"
}

// typeErrorField is the path of the field an UnmarshalTypeError is about,
// or "". sigs.k8s.io/json's error type is internal to it, so its exported
// Field is read by name.
func typeErrorField(err error) string {
	v := reflect.ValueOf(err)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct || v.Elem().Type().Name() != "UnmarshalTypeError" {
		return ""
	}
	f := v.Elem().FieldByName("Field")
	if f.Kind() != reflect.String {
		return ""
	}
	return f.String()
}
