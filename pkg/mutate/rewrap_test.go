package mutate_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
)

// A rewrap request that cannot be served is denied before any key is
// asked, naming the annotation or the field; with a Decryptor that
// cannot rewrap, or no generated keys, it is never decrypted instead.
func TestRewrapRefusals(t *testing.T) {
	doc := []byte("k: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]\nsops:\n    mac: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]\n")
	targets := func(string, bool) (decrypt.RewrapPlan, error) { return decrypt.RewrapPlan{}, nil }
	tests := []struct {
		name, kind, value string
		data              map[string][]byte
		rewrap            func(string, bool) (decrypt.RewrapPlan, error)
		want              string
	}{
		{"a value that is not a request", "Secret", "yes", map[string][]byte{"f.yaml": doc}, targets,
			`cannot rewrap Secret team-a/app field metadata.annotations[sops-webhook.io/rewrap]: the value must be "true" or "drop-retired"`},
		{"a ConfigMap", "ConfigMap", "true", nil, targets, "a rewrap is asked with a Secret"},
		{"no generated keys", "Secret", "true", map[string][]byte{"f.yaml": doc}, nil, "this webhook generates no keys"},
		{"values tokens", "Secret", "true", map[string][]byte{"v": []byte("ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]")}, targets, "a rewrap takes whole SOPS files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeDecryptor{}
			h := mutate.NewHandler(static(mutate.Engine{Decryptor: fake, Rewrap: tt.rewrap}))
			annotations := map[string]string{mutate.AnnotationRewrap: tt.value}
			var obj runtime.Object
			if tt.kind == "Secret" {
				s := secret("app", tt.data)
				s.Annotations = annotations
				obj = s
			} else {
				cm := &corev1.ConfigMap{ObjectMeta: secret("app", nil).ObjectMeta, Data: map[string]string{"f.yaml": string(doc)}}
				cm.Annotations = annotations
				obj = cm
			}
			resp := h.Handle(context.Background(), admission.Request{AdmissionRequest: request(t, tt.kind, admissionv1.Create, obj)})
			assert.False(t, resp.Allowed)
			assert.EqualValues(t, 403, resp.Result.Code)
			assert.Contains(t, resp.Result.Message, tt.want)
			assert.Zero(t, fake.calls.Load(), "nothing decrypted")
		})
	}
}

// A rewrap answers with the rewrapped files in place and the annotation
// kept, and puts back a provenance record the request wrote.
func TestRewrapAnswers(t *testing.T) {
	fake := &fakeDecryptor{}
	h := mutate.NewHandler(static(mutate.Engine{Decryptor: fake, Rewrap: func(string, bool) (decrypt.RewrapPlan, error) { return decrypt.RewrapPlan{}, nil }}))
	s := secret("app", map[string][]byte{"f.yaml": []byte("k: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]\nsops:\n    mac: x\n"), "plain": []byte("x")})
	s.Annotations = map[string]string{mutate.AnnotationRewrap: "true", mutate.AnnotationDecrypted: "data.forged"}
	areq := request(t, "Secret", admissionv1.Create, s)
	resp := h.Handle(context.Background(), admission.Request{AdmissionRequest: areq})
	assert.True(t, resp.Allowed, messageOf(resp))
	assert.EqualValues(t, 1, fake.calls.Load())
	assert.Equal(t, []jsonpatch.JsonPatchOperation{
		jsonpatch.NewOperation("remove", "/metadata/annotations/sops-webhook.io~1decrypted", nil),
		jsonpatch.NewOperation("replace", "/data/f.yaml", "cmV3cmFwcGVk"),
	}, resp.Patches, "the forged record removed, the file replaced, the request kept")
	assert.Equal(t, "data.f.yaml", resp.AuditAnnotations["rewrapped"])
}
