package mutate_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// FuzzHandler sends arbitrary objects through the whole handler, with the
// golden fixtures' key, seeded with every golden request. The handler must
// never panic (it would answer 500 "internal error"), and its message must
// never quote the golden plaintexts.
func FuzzHandler(f *testing.F) {
	h := goldenHandler(f)
	for _, body := range goldenRequests(f) {
		var review admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &review); err != nil {
			f.Fatal(err)
		}
		f.Add(review.Request.Kind.Kind == "ConfigMap", review.Request.Object.Raw)
	}
	f.Fuzz(func(t *testing.T, configMap bool, object []byte) {
		kind := "Secret"
		if configMap {
			kind = "ConfigMap"
		}
		req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			UID: "fuzz", Kind: metav1.GroupVersionKind{Version: "v1", Kind: kind}, Namespace: "team-a",
			Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: object},
		}}
		resp := h.Handle(context.Background(), req)
		msg := messageOf(resp)
		if resp.Result != nil && resp.Result.Code == 500 {
			t.Fatalf("the handler failed internally (a recovered panic?): %s", msg)
		}
		if strings.Contains(msg, "s3cr3t") {
			t.Fatalf("plaintext in the message: %s", msg)
		}
	})
}
