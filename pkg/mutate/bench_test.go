package mutate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// benchCases are a warm handler and the requests of make bench's load
// scenarios.
func benchCases(b *testing.B) (*mutate.Handler, map[string]admissionv1.AdmissionRequest) {
	key := sopskit.NewAgeKey(b, false)
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	src, err := keysource.LoadAge("k", key.IdentityFile)
	if err != nil {
		b.Fatal(err)
	}
	ring, err := keysource.NewRingWith([]keysource.Source{src}, []keysource.RingOption{keysource.WithCache(1024, time.Hour, nil)})
	if err != nil {
		b.Fatal(err)
	}
	h := mutate.NewHandler(static(mutate.Engine{Decryptor: decrypt.New(ring, decrypt.WithResultCache(time.Hour, decrypt.DefaultResultCacheBytes))}))

	var plain strings.Builder
	for i := range 20 {
		fmt.Fprintf(&plain, "k%02d: secret-value-%02d\n", i, i)
	}
	values := sopskit.SopsEncrypt(b, []byte(plain.String()), "yaml", r)
	var file strings.Builder
	for _, l := range sopskit.ValuesLeaves(b, values) {
		fmt.Fprintf(&file, "%s = %s\n", strings.TrimSuffix(l.Path, ":"), l.Value)
	}
	valuesSecret := secret("bench", map[string][]byte{"app.ini": []byte(file.String())})
	valuesSecret.Annotations = map[string]string{mutate.AnnotationValues: sopskit.ValuesIndex(b, values)}
	return h, map[string]admissionv1.AdmissionRequest{
		"no-sops":   request(b, "Secret", admissionv1.Create, secret("bench", map[string][]byte{"password": []byte("hunter2")})),
		"documents": request(b, "Secret", admissionv1.Create, secret("bench", map[string][]byte{"app.env": sopskit.SopsEncrypt(b, []byte("A=1\nB=2\n"), "dotenv", r), "c.yaml": sopskit.SopsEncrypt(b, []byte("a: 1\n"), "yaml", r)})),
		"20-tokens": request(b, "Secret", admissionv1.Create, valuesSecret),
	}
}

// BenchmarkHandler is the handler alone, with warm caches, for the load
// scenarios of make bench: what a request costs beyond decoding the review.
func BenchmarkHandler(b *testing.B) {
	h, cases := benchCases(b)
	for name, req := range cases {
		b.Run(name, func(b *testing.B) {
			areq := admission.Request{AdmissionRequest: req}
			h.Handle(context.Background(), areq) // warm the caches
			b.ReportAllocs()
			for b.Loop() {
				if resp := h.Handle(context.Background(), areq); !resp.Allowed {
					b.Fatal(messageOf(resp))
				}
			}
		})
	}
}

// BenchmarkServeHTTP is the whole request as the webhook server runs it,
// without TLS: the review's body read and decoded, the handler, the patch
// and the response encoded; "noop" is controller-runtime's admission
// server with a handler that allows everything, the baseline of make
// bench.
func BenchmarkServeHTTP(b *testing.B) {
	h, cases := benchCases(b)
	noop := admission.HandlerFunc(func(context.Context, admission.Request) admission.Response { return admission.Allowed("") })
	for name, req := range cases {
		body, err := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request:  &req,
		})
		if err != nil {
			b.Fatal(err)
		}
		for _, target := range []struct {
			name string
			srv  http.Handler
		}{{"webhook", h}, {"noop", &webhook.Admission{Handler: noop}}} {
			srv := target.srv
			b.Run(name+"/"+target.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					rec := httptest.NewRecorder()
					req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					srv.ServeHTTP(rec, req)
					if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte(`"allowed":true`)) {
						b.Fatalf("%d %s", rec.Code, rec.Body)
					}
				}
			})
		}
	}
}
