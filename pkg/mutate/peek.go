package mutate

import (
	"bytes"
	"encoding/json"
	"errors"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// reviewHead is what answering an AdmissionReview takes: its apiVersion and
// its request's identity, without the objects.
type reviewHead struct {
	apiVersion string
	uid        types.UID
	kind       metav1.GroupVersionKind
	operation  admissionv1.Operation
	namespace  string
	name       string
}

// peekReview reads the head of an AdmissionReview with a streaming decoder
// and stops at the request's objects, which the API server encodes after
// the fields the head needs; so a refusal costs a few hundred bytes of
// parsing however large the objects are. Fields found after the objects are
// still read, by skipping them. ok is false when body is not an
// AdmissionReview with an apiVersion and a request uid.
func peekReview(body []byte) (head reviewHead, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	atObjects := false
	err := eachKey(dec, func(key string) (bool, error) {
		switch key {
		case "apiVersion":
			return false, dec.Decode(&head.apiVersion)
		case "request":
			err := eachKey(dec, func(key string) (bool, error) {
				switch key {
				case "uid":
					return false, dec.Decode(&head.uid)
				case "kind":
					return false, dec.Decode(&head.kind)
				case "operation":
					return false, dec.Decode(&head.operation)
				case "namespace":
					return false, dec.Decode(&head.namespace)
				case "name":
					return false, dec.Decode(&head.name)
				case "object", "oldObject":
					// Everything the head needs comes before the objects
					// in what the API server sends.
					if head.uid != "" && head.apiVersion != "" && head.operation != "" {
						atObjects = true
						return true, nil
					}
				}
				return false, dec.Decode(&skipValue{})
			})
			return atObjects, err
		}
		return false, dec.Decode(&skipValue{})
	})
	return head, err == nil && head.apiVersion != "" && head.uid != ""
}

// eachKey calls f with each key of the JSON object dec is at, with dec at
// the key's value; f decodes the value, or returns stop to end the walk
// there, leaving the rest unread.
func eachKey(dec *json.Decoder, f func(key string) (stop bool, err error)) error {
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errNotObject
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := t.(string)
		stop, err := f(key)
		if err != nil || stop {
			return err
		}
	}
	_, err := dec.Token()
	return err
}

// errNotObject is eachKey's error for a value that is not a JSON object.
var errNotObject = errors.New("not a JSON object")

// skipValue decodes any JSON value and keeps nothing of it.
type skipValue struct{}

func (*skipValue) UnmarshalJSON([]byte) error { return nil }

// request returns the head as the admission request metrics are labelled
// with.
func (h reviewHead) request() admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: h.uid, Kind: h.kind, Operation: h.operation, Namespace: h.namespace, Name: h.name,
	}}
}
