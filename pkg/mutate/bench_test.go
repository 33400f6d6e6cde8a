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

	"filippo.io/age"
	ageArmor "filippo.io/age/armor"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/pkg/policy"
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
		}{{"webhook", mutate.NewServer(h, mutate.Gate{})}, {"noop", &webhook.Admission{Handler: noop}}} {
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

// hostileSmallRequest is the costliest small request a stranger can send
// with only the webhook's public recipient: a Secret of under 64 KiB (no
// handling slot, the small lane) whose one YAML document lists as many age
// master keys as fit, each naming our recipient and wrapping a data key
// for strangers in stanzas recipient stanzas, none of which opens.
func hostileSmallRequest(b testing.TB, key sopskit.AgeKey, stanzas int) admissionv1.AdmissionRequest {
	doc := sopskit.SopsEncrypt(b, []byte("password: hostile\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
	var tree map[string]any
	if err := sigsyaml.Unmarshal(doc, &tree); err != nil {
		b.Fatal(err)
	}
	meta := tree["sops"].(map[string]any)
	var entries []any
	for size := len(doc); len(entries) < decrypt.MaxMasterKeys; {
		var enc bytes.Buffer
		aw := ageArmor.NewWriter(&enc)
		var to []age.Recipient
		for range stanzas {
			id, err := age.GenerateX25519Identity()
			if err != nil {
				b.Fatal(err)
			}
			to = append(to, id.Recipient())
		}
		w, err := age.Encrypt(aw, to...)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = w.Write(make([]byte, 32))
		_ = w.Close()
		_ = aw.Close()
		if size += enc.Len() + 100; size*4/3 > 60<<10 {
			break
		}
		entries = append(entries, map[string]any{"recipient": key.Recipient, "enc": enc.String()})
	}
	meta["age"] = entries
	hostile, err := sigsyaml.Marshal(tree)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d stanzas: %d master keys, %d bytes", stanzas, len(entries), len(hostile))
	return request(b, "Secret", admissionv1.Create, secret("hostile", map[string][]byte{"app.yaml": hostile}))
}

// BenchmarkWorstSmallRequest is what a hostile small request costs the
// handler with a fresh key ring each time (nothing remembered, as for a
// stranger who sends new payloads): with few stanzas per master key, the
// request's failed unwraps are what bounds it; with many, the stanza cap.
func BenchmarkWorstSmallRequest(b *testing.B) {
	key := sopskit.NewAgeKey(b, false)
	src, err := keysource.LoadAge("k", key.IdentityFile)
	if err != nil {
		b.Fatal(err)
	}
	for _, stanzas := range []int{1, 4, 40} {
		req := hostileSmallRequest(b, key, stanzas)
		b.Run(fmt.Sprintf("stanzas-%d", stanzas), func(b *testing.B) {
			areq := admission.Request{AdmissionRequest: req}
			for b.Loop() {
				ring, err := keysource.NewRing(src)
				if err != nil {
					b.Fatal(err)
				}
				if resp := mutate.NewHandler(static(mutate.Engine{Decryptor: decrypt.New(ring)})).Handle(context.Background(), areq); resp.Allowed {
					b.Fatal("a hostile request was allowed")
				}
			}
		})
	}
}

// configOfSize is an Engine with n generated keys of one generation each,
// and one policy rule per key granting it to a namespace of its own; the
// last key, which the payloads are encrypted for, is granted to team-a,
// the requests' namespace. With caches the data keys and results are
// reused; without, every request unwraps and decrypts.
func configOfSize(b *testing.B, n int, caches bool) (mutate.Engine, sopskit.Recipients) {
	var (
		sources []keysource.Source
		names   []string
		rules   []policy.Rule
		last    *age.X25519Identity
	)
	for i := range n {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			b.Fatal(err)
		}
		name := fmt.Sprintf("key-%04d", i)
		sources = append(sources, keysource.NewAgeGenerations(name, []keysource.AgeGeneration{{Number: 1, Identity: id}}))
		names = append(names, name)
		ns := fmt.Sprintf("team-%04d-*", i)
		if i == n-1 {
			ns, last = "team-a", id
		}
		rules = append(rules, policy.Rule{Keys: []string{name}, Namespaces: []string{ns}})
	}
	var opts []keysource.RingOption
	var dopts []decrypt.Option
	if caches {
		opts = append(opts, keysource.WithCache(1024, time.Hour, nil))
		dopts = append(dopts, decrypt.WithResultCache(time.Hour, decrypt.DefaultResultCacheBytes))
	}
	ring, err := keysource.NewRingWith(sources, opts)
	if err != nil {
		b.Fatal(err)
	}
	p, err := policy.New(rules, names, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	return mutate.Engine{Decryptor: decrypt.New(ring, dopts...), Policy: p}, sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: last.Recipient().String()}}}
}

// BenchmarkConfigSize is how a request's cost grows with the size of the
// configuration: a cold document (no cache: the data key unwrapped, the
// document decrypted) and a warm values payload (cached), with 1, 100 and
// 1,000 configured keys and as many policy rules.
func BenchmarkConfigSize(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		cold, r := configOfSize(b, n, false)
		doc := request(b, "Secret", admissionv1.Create, secret("bench", map[string][]byte{"app.yaml": sopskit.SopsEncrypt(b, []byte("password: cold\n"), "yaml", r)}))
		warm, r := configOfSize(b, n, true)
		values := sopskit.SopsEncrypt(b, []byte("db:\n  password: warm\n  user: app\n"), "yaml", r)
		var file strings.Builder
		for _, l := range sopskit.ValuesLeaves(b, values) {
			fmt.Fprintf(&file, "%s = %s\n", strings.TrimSuffix(l.Path, ":"), l.Value)
		}
		vs := secret("bench", map[string][]byte{"app.ini": []byte(file.String())})
		vs.Annotations = map[string]string{mutate.AnnotationValues: sopskit.ValuesIndex(b, values)}
		for _, c := range []struct {
			name string
			eng  mutate.Engine
			req  admissionv1.AdmissionRequest
		}{{"cold-document", cold, doc}, {"warm-values", warm, request(b, "Secret", admissionv1.Create, vs)}} {
			b.Run(fmt.Sprintf("%s/keys-%d", c.name, n), func(b *testing.B) {
				h := mutate.NewHandler(static(c.eng))
				areq := admission.Request{AdmissionRequest: c.req}
				h.Handle(context.Background(), areq) // warm what may be warmed
				b.ReportAllocs()
				for b.Loop() {
					if resp := h.Handle(context.Background(), areq); !resp.Allowed {
						b.Fatal(messageOf(resp))
					}
				}
			})
		}
	}
}
