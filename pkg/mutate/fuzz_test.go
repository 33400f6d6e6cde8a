package mutate_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
)

// FuzzHandler sends arbitrary objects through the whole handler, with the
// golden fixtures' key, seeded with every golden request. The handler must
// never panic (it would answer 500 "internal error"), and its message must
// never quote the golden plaintexts.
func FuzzHandler(f *testing.F) {
	src, err := keysource.LoadAge("golden", goldenKey)
	if err != nil {
		f.Fatal(err)
	}
	ring, err := keysource.NewRing(src)
	if err != nil {
		f.Fatal(err)
	}
	h := mutate.NewHandler(static(mutate.Engine{Decryptor: decrypt.New(ring)}))
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.request.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no golden requests: %v", err)
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		var review admissionv1.AdmissionReview
		if err := json.Unmarshal(raw, &review); err != nil {
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
