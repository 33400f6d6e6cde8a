package mutate

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPeekReview(t *testing.T) {
	secret := metav1.GroupVersionKind{Version: "v1", Kind: "Secret"}
	full := reviewHead{apiVersion: "admission.k8s.io/v1", uid: "u-1", kind: secret, operation: admissionv1.Create, namespace: "team-a", name: "s"}
	tests := []struct {
		name string
		body string
		want reviewHead
		ok   bool
	}{
		{
			name: "the API server's order",
			body: `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Secret"},"resource":{"group":"","version":"v1","resource":"secrets"},"name":"s","namespace":"team-a","operation":"CREATE","userInfo":{"username":"u","groups":["g"]},"object":{"data":{"a":"b"}},"oldObject":null}}`,
			want: full, ok: true,
		},
		{
			name: "stops at the objects: what follows is never read",
			body: `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u-1","kind":{"version":"v1","kind":"Secret"},"name":"s","namespace":"team-a","operation":"CREATE","object":{"data":` + "\x00not json",
			want: full, ok: true,
		},
		{
			name: "fields after the objects are still found",
			body: `{"request":{"object":{"data":{"a":"b"}},"uid":"u-1","kind":{"version":"v1","kind":"Secret"},"name":"s","namespace":"team-a","operation":"CREATE"},"apiVersion":"admission.k8s.io/v1"}`,
			want: full, ok: true,
		},
		{
			name: "v1beta1 and a generated name",
			body: `{"apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"u-2","kind":{"version":"v1","kind":"ConfigMap"},"namespace":"b","operation":"UPDATE","object":{}}}`,
			want: reviewHead{apiVersion: "admission.k8s.io/v1beta1", uid: "u-2", kind: metav1.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}, operation: admissionv1.Update, namespace: "b"},
			ok:   true,
		},
		{name: "no uid", body: `{"apiVersion":"admission.k8s.io/v1","request":{"operation":"CREATE","object":{}}}`},
		{name: "no apiVersion", body: `{"request":{"uid":"u","operation":"CREATE","object":{}}}`},
		{name: "not JSON", body: "\x00\x00\x00"},
		{name: "not an object", body: `["apiVersion"]`},
		{name: "truncated in the head", body: `{"apiVersion":"admission.k8s.io/v1","request":{"uid":"u-1","kind":{"version"`},
		{name: "a uid of the wrong type", body: `{"apiVersion":"admission.k8s.io/v1","request":{"uid":7,"operation":"CREATE","object":{}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := peekReview([]byte(tt.body))
			assert.Equal(t, tt.ok, ok)
			if tt.ok {
				assert.Equal(t, tt.want, got)
			}
		})
	}
}

// FuzzPeekReview: any body is peeked without a panic; and for any review
// encoded as the API server encodes it (Go's field order), the peek finds
// what a full decode finds.
func FuzzPeekReview(f *testing.F) {
	f.Add([]byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u-1","kind":{"version":"v1","kind":"Secret"},"name":"s","namespace":"n","operation":"CREATE","object":{}}}`))
	f.Add([]byte(`{"request":{"object":{"a":[1,2,{"b":null}]},"uid":"u","operation":"DELETE"},"apiVersion":"v"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		peekReview(body)
		var full admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &full); err != nil || full.Request == nil {
			return
		}
		encoded, err := json.Marshal(full)
		if err != nil {
			t.Fatal(err)
		}
		head, ok := peekReview(encoded)
		r := full.Request
		if want := full.APIVersion != "" && r.UID != ""; ok != want {
			t.Fatalf("peek ok %v, want %v: %s", ok, want, encoded)
		}
		want := reviewHead{apiVersion: full.APIVersion, uid: r.UID, kind: r.Kind, operation: r.Operation, namespace: r.Namespace, name: r.Name}
		if ok && head != want {
			t.Fatalf("peek %+v, full decode %+v", head, want)
		}
	})
}
