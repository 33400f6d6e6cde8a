package mutate

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"

	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	kjson "sigs.k8s.io/json"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
)

// review is an AdmissionReview as decodeReview read it.
type review struct {
	apiVersion string
	req        admission.Request
	// obj is the request's object, nil when it was not decoded.
	obj *object
}

// reviewJSON is an AdmissionReview as the handler reads it: the request's
// object decoded as O, of its old object only the provenance record.
type reviewJSON[O any] struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		admissionv1.AdmissionRequest
		// These shadow AdmissionRequest's fields of the same names.
		Object    O             `json:"object"`
		OldObject oldObjectJSON `json:"oldObject"`
	} `json:"request"`
}

// notReviewError is decodeReview's error for a body that is not a review
// the webhook answers.
type notReviewError struct{ reason string }

func (e *notReviewError) Error() string { return e.reason }

// decodeReview decodes body, an AdmissionReview, in one pass, with its
// object when withObject, case-sensitively as the API server encodes it,
// and never keeping the old object but its provenance record.
//
// Its error is a *notReviewError, and rv zero, when body is not a review
// the webhook answers. Any other error is the object's, which did not
// decode: rv then holds the request, which the error refuses as a bad one.
// No error quotes the body.
func decodeReview(body []byte, withObject bool) (rv review, err error) {
	var objErr error
	if withObject {
		objErr = checkMembers(body)
	}
	if withObject && objErr == nil {
		var in reviewJSON[objectJSON]
		if objErr = kjson.UnmarshalCaseSensitivePreserveInts(body, &in); objErr == nil {
			if rv, err = in.review(); err != nil {
				return review{}, err
			}
			if rv.obj, err = in.Request.Object.object(rv.req.Kind.Kind); err == nil {
				rv.obj.old = in.Request.OldObject.provenance
			}
			return rv, err
		}
	}
	// Not asked for, or it did not decode: read the review without it.
	var in reviewJSON[skipValue]
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &in); err != nil {
		return review{}, &notReviewError{"the body is not an AdmissionReview: " + describeJSONError(err)}
	}
	if rv, err = in.review(); err != nil || objErr == nil {
		return rv, err
	}
	return rv, fmt.Errorf("decode %s: %s", rv.req.Kind.Kind, describeJSONError(objErr))
}

// review returns in's version and request, or why it is not a review the
// webhook answers. A review without apiVersion and kind is taken as v1, as
// controller-runtime takes it.
func (in *reviewJSON[O]) review() (review, error) {
	switch {
	case in.Kind != "" && in.Kind != "AdmissionReview":
		return review{}, &notReviewError{fmt.Sprintf("the body is a %q, not an AdmissionReview", in.Kind)}
	case in.APIVersion != "" && in.APIVersion != reviewV1 && in.APIVersion != reviewV1beta1:
		return review{}, &notReviewError{fmt.Sprintf("AdmissionReview version %q is not served: send %s", in.APIVersion, reviewV1)}
	case in.Request == nil:
		return review{}, &notReviewError{"the AdmissionReview holds no request"}
	}
	rv := review{apiVersion: in.APIVersion, req: admission.Request{AdmissionRequest: in.Request.AdmissionRequest}}
	if rv.apiVersion == "" {
		rv.apiVersion = reviewV1
	}
	return rv, nil
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
// field names match case-sensitively.
func decodeObject(kind string, raw []byte) (*object, error) {
	if err := checkMembers(raw); err != nil {
		return nil, fmt.Errorf("decode %s: %w", kind, err)
	}
	var o objectJSON
	if err := kjson.UnmarshalCaseSensitivePreserveInts(raw, &o); err != nil {
		return nil, fmt.Errorf("decode %s: %s", kind, describeJSONError(err))
	}
	return o.object(kind)
}

// object returns o as the kind it was sent as; errors name the field and
// never quote a value. A Helm release record is returned without its
// fields, which are never read.
func (o *objectJSON) object(kind string) (*object, error) {
	m := o.Metadata
	obj := &object{kind: kind, namespace: m.Namespace, name: m.Name, annotations: m.Annotations}
	if kind != "Secret" {
		obj.fields = configMapFields(o.Data, o.BinaryData)
		return obj, nil
	}
	if o.Type == HelmReleaseSecretType {
		obj.helmRelease = true
		return obj, nil
	}
	data := make(map[string][]byte, len(o.Data))
	for k, v := range o.Data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("decode Secret: field data.%s is not base64", k)
		}
		data[k] = b
	}
	obj.fields = secretFields(data)
	return obj, nil
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
