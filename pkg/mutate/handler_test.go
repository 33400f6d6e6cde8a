package mutate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

var update = flag.Bool("update", false, "regenerate testdata/golden with a new key and the sops CLI")

const (
	goldenDir = "testdata/golden"
	goldenKey = "testdata/golden-test-only.agekey"
)

// Plaintexts of the golden documents.
var (
	plainEnv  = "DB_USER=app\nDB_PASSWORD=golden-dotenv-s3cr3t\n"
	plainYAML = "db:\n    password: golden-yaml-s3cr3t\n    port: 5432\n"
	plainJSON = `{"token":"golden-json-s3cr3t","retries":3}`
	plainBin  = "golden-binary-s3cr3t\x00\xff\xfe"
)

// goldenCase builds one admission request. build is only called with
// -update; otherwise the request is read from testdata.
type goldenCase struct {
	name  string
	build func(t *testing.T, g *generator) admissionv1.AdmissionRequest
	// check runs on the object after the response's patch is applied.
	check func(t *testing.T, patched []byte)
}

// generator makes fresh fixtures with the real sops CLI.
type generator struct {
	key   sopskit.AgeKey
	other sopskit.AgeKey
}

func (g *generator) enc(t testing.TB, plain, format string) []byte {
	return sopskit.SopsEncrypt(t, []byte(plain), format, sopskit.Recipients{Age: []sopskit.AgeKey{g.key}})
}

// goldenValues is a values file encrypted by the sops CLI: its index and
// its tokens by path.
type goldenValues struct {
	index  string
	tokens map[string]string
}

func (g *generator) values(t *testing.T) goldenValues {
	enc := g.enc(t, "db:\n  password: golden-values-s3cr3t\n  port: 5432\n  tls: true\n", "yaml")
	v := goldenValues{index: sopskit.ValuesIndex(t, enc), tokens: map[string]string{}}
	for _, l := range sopskit.ValuesLeaves(t, enc) {
		v.tokens[l.Path] = l.Value.(string)
	}
	return v
}

func request(t testing.TB, kind string, op admissionv1.Operation, obj runtime.Object) admissionv1.AdmissionRequest {
	raw, err := json.Marshal(obj)
	require.NoError(t, err)
	return admissionv1.AdmissionRequest{
		UID:       "00000000-0000-0000-0000-000000000001",
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: kind},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: strings.ToLower(kind) + "s"},
		Namespace: "team-a",
		Operation: op,
		Object:    runtime.RawExtension{Raw: raw},
	}
}

// replacing makes r an update of old.
func replacing(t testing.TB, r admissionv1.AdmissionRequest, old runtime.Object) admissionv1.AdmissionRequest {
	raw, err := json.Marshal(old)
	require.NoError(t, err)
	r.Operation, r.OldObject = admissionv1.Update, runtime.RawExtension{Raw: raw}
	return r
}

// recorded returns s with the provenance record decrypted and keys.
func recorded(s *corev1.Secret, decrypted, keys string) *corev1.Secret {
	s.Annotations = map[string]string{mutate.AnnotationDecrypted: decrypted, mutate.AnnotationKeys: keys, "team": "a"}
	return s
}

func secret(name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team-a"},
		Data:       data,
		Type:       corev1.SecretTypeOpaque,
	}
}

func secretData(t *testing.T, patched []byte) map[string][]byte {
	var s corev1.Secret
	require.NoError(t, json.Unmarshal(patched, &s))
	return s.Data
}

var goldenCases = []goldenCase{
	{
		name: "secret-documents",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			return request(t, "Secret", admissionv1.Create, secret("app", map[string][]byte{
				"app.env":     g.enc(t, plainEnv, "dotenv"),
				"config.yaml": g.enc(t, plainYAML, "yaml"),
				"plain":       []byte("not encrypted"),
			}))
		},
		check: func(t *testing.T, patched []byte) {
			d := secretData(t, patched)
			assert.Equal(t, plainEnv, string(d["app.env"]))
			assert.Equal(t, plainYAML, string(d["config.yaml"]))
			assert.Equal(t, "not encrypted", string(d["plain"]))
		},
	},
	{
		name: "secret-dry-run",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			r := request(t, "Secret", admissionv1.Create, secret("app", map[string][]byte{"app.env": g.enc(t, plainEnv, "dotenv")}))
			dry := true
			r.DryRun = &dry
			return r
		},
		check: func(t *testing.T, patched []byte) {
			assert.Equal(t, plainEnv, string(secretData(t, patched)["app.env"]))
		},
	},
	{
		name: "secret-no-sops",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			return request(t, "Secret", admissionv1.Create, secret("plain", map[string][]byte{"password": []byte("hunter2")}))
		},
	},
	{
		name: "secret-update-partial",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			s := secret("app", map[string][]byte{
				"old.env": []byte(plainEnv),
				"new.env": g.enc(t, plainEnv, "dotenv"),
			})
			// The request's own record is not the webhook's: the stored
			// object's is merged.
			recorded(s, "data.forged.env,data.old.env", "stolen")
			old := recorded(secret("app", map[string][]byte{"old.env": []byte(plainEnv), "gone.env": []byte(plainEnv)}), "data.gone.env,data.old.env", "golden")
			return replacing(t, request(t, "Secret", admissionv1.Update, s), old)
		},
		check: func(t *testing.T, patched []byte) {
			var s corev1.Secret
			require.NoError(t, json.Unmarshal(patched, &s))
			assert.Equal(t, plainEnv, string(s.Data["new.env"]))
			assert.Equal(t, "data.new.env,data.old.env", s.Annotations[mutate.AnnotationDecrypted])
			assert.Equal(t, "golden", s.Annotations[mutate.AnnotationKeys])
			assert.Equal(t, "a", s.Annotations["team"])
		},
	},
	{
		name: "secret-provenance-forged-create",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			return request(t, "Secret", admissionv1.Create, recorded(secret("forged", map[string][]byte{"password": []byte("typed-in")}), "data.password", "team-a"))
		},
		check: func(t *testing.T, patched []byte) {
			var s corev1.Secret
			require.NoError(t, json.Unmarshal(patched, &s))
			assert.Equal(t, map[string]string{"team": "a"}, s.Annotations, "a record nothing decrypted is removed")
		},
	},
	{
		name: "secret-provenance-forged-update",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			data := map[string][]byte{"app.env": []byte(plainEnv), "password": []byte("typed-in")}
			s := recorded(secret("app", data), "data.app.env,data.password", "golden,team-b")
			return replacing(t, request(t, "Secret", admissionv1.Update, s), recorded(secret("app", data), "data.app.env", "golden"))
		},
		check: func(t *testing.T, patched []byte) {
			var s corev1.Secret
			require.NoError(t, json.Unmarshal(patched, &s))
			assert.Equal(t, "data.app.env", s.Annotations[mutate.AnnotationDecrypted], "put back to the stored record")
			assert.Equal(t, "golden", s.Annotations[mutate.AnnotationKeys])
		},
	},
	{
		name: "secret-provenance-kept",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			data := map[string][]byte{"app.env": []byte(plainEnv)}
			return replacing(t, request(t, "Secret", admissionv1.Update, recorded(secret("app", data), "data.app.env", "golden")),
				recorded(secret("app", data), "data.app.env", "golden"))
		},
	},
	{
		name: "secret-unknown-key",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			enc := sopskit.SopsEncrypt(t, []byte(plainEnv), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{g.other}})
			return request(t, "Secret", admissionv1.Create, secret("stolen", map[string][]byte{"app.env": enc}))
		},
	},
	{
		name: "secret-tampered",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			enc := sopskit.SopsEncrypt(t, []byte("user: app\nnote_unencrypted: public\n"), "yaml",
				sopskit.Recipients{Age: []sopskit.AgeKey{g.key}}, "--unencrypted-suffix", "_unencrypted")
			enc = bytes.Replace(enc, []byte("note_unencrypted: public"), []byte("note_unencrypted: forged"), 1)
			return request(t, "Secret", admissionv1.Create, secret("tampered", map[string][]byte{"app.yaml": enc}))
		},
	},
	{
		name: "secret-tokens-without-index",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			return request(t, "Secret", admissionv1.Create, secret("values", map[string][]byte{
				"password": []byte(g.values(t).tokens["db:password:"]),
			}))
		},
	},
	{
		name: "secret-values",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			v := g.values(t)
			s := secret("values", map[string][]byte{
				"password": []byte(v.tokens["db:password:"]),
				"port":     []byte(v.tokens["db:port:"]),
				"tls":      []byte(v.tokens["db:tls:"]),
				"plain":    []byte("not encrypted"),
			})
			s.Annotations = map[string]string{mutate.AnnotationValues: v.index, "team": "a"}
			return request(t, "Secret", admissionv1.Create, s)
		},
		check: func(t *testing.T, patched []byte) {
			var s corev1.Secret
			require.NoError(t, json.Unmarshal(patched, &s))
			assert.Equal(t, "golden-values-s3cr3t", string(s.Data["password"]))
			assert.Equal(t, "5432", string(s.Data["port"]))
			assert.Equal(t, "true", string(s.Data["tls"]))
			assert.Equal(t, "not encrypted", string(s.Data["plain"]))
			assert.NotContains(t, s.Annotations, mutate.AnnotationValues, "the index is removed")
			assert.Equal(t, "data.password,data.port,data.tls", s.Annotations[mutate.AnnotationDecrypted])
			assert.Equal(t, "a", s.Annotations["team"])
		},
	},
	{
		name: "configmap-values-in-config-file",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			v := g.values(t)
			return request(t, "ConfigMap", admissionv1.Create, &corev1.ConfigMap{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
				ObjectMeta: metav1.ObjectMeta{Name: "app-config", Namespace: "team-a", Annotations: map[string]string{mutate.AnnotationValues: v.index}},
				Data: map[string]string{"config.yaml": "database:\n  url: postgres://app:" + v.tokens["db:password:"] +
					"@db:" + v.tokens["db:port:"] + "/app\n  tls: " + v.tokens["db:tls:"] + "\n"},
			})
		},
		check: func(t *testing.T, patched []byte) {
			var c corev1.ConfigMap
			require.NoError(t, json.Unmarshal(patched, &c))
			assert.Equal(t, "database:\n  url: postgres://app:golden-values-s3cr3t@db:5432/app\n  tls: true\n", c.Data["config.yaml"])
			assert.NotContains(t, c.Annotations, mutate.AnnotationValues)
		},
	},
	{
		name: "secret-values-token-not-indexed",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			v := g.values(t)
			other := g.values(t) // another encryption: its tags are not in v's index
			s := secret("values", map[string][]byte{"password": []byte(other.tokens["db:password:"])})
			s.Annotations = map[string]string{mutate.AnnotationValues: v.index}
			return request(t, "Secret", admissionv1.Create, s)
		},
	},
	{
		name: "secret-values-index-unused",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			s := secret("values", map[string][]byte{"password": []byte("already plain")})
			s.Annotations = map[string]string{mutate.AnnotationValues: g.values(t).index}
			return request(t, "Secret", admissionv1.Update, s)
		},
		check: func(t *testing.T, patched []byte) {
			var s corev1.Secret
			require.NoError(t, json.Unmarshal(patched, &s))
			assert.Empty(t, s.Annotations, "only the index is removed")
			assert.Equal(t, "already plain", string(s.Data["password"]))
		},
	},
	{
		name: "secret-expand",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			s := secret("app", map[string][]byte{"app.env": g.enc(t, plainEnv, "dotenv"), "other": []byte("x")})
			s.Annotations = map[string]string{mutate.AnnotationExpand: "true"}
			return request(t, "Secret", admissionv1.Create, s)
		},
		check: func(t *testing.T, patched []byte) {
			var s corev1.Secret
			require.NoError(t, json.Unmarshal(patched, &s))
			assert.Equal(t, map[string][]byte{"DB_USER": []byte("app"), "DB_PASSWORD": []byte("golden-dotenv-s3cr3t"), "other": []byte("x")}, s.Data)
			assert.Equal(t, "data.DB_PASSWORD,data.DB_USER", s.Annotations[mutate.AnnotationDecrypted])
			assert.JSONEq(t, `{"data.app.env":["DB_PASSWORD","DB_USER"]}`, s.Annotations[mutate.AnnotationExpanded])
		},
	},
	{
		name: "secret-expand-update",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			s := secret("app", map[string][]byte{
				"app.env": g.enc(t, plainEnv, "dotenv"),
				"DB_USER": []byte("previous"), "OLD_KEY": []byte("stale"), "other": []byte("x"),
			})
			s.Annotations = map[string]string{
				mutate.AnnotationExpand:    "true",
				mutate.AnnotationExpanded:  `{"data.app.env":["DB_USER","OLD_KEY"]}`,
				mutate.AnnotationDecrypted: "data.DB_USER,data.OLD_KEY",
			}
			return request(t, "Secret", admissionv1.Update, s)
		},
		check: func(t *testing.T, patched []byte) {
			var s corev1.Secret
			require.NoError(t, json.Unmarshal(patched, &s))
			assert.Equal(t, map[string][]byte{"DB_USER": []byte("app"), "DB_PASSWORD": []byte("golden-dotenv-s3cr3t"), "other": []byte("x")}, s.Data,
				"entries replaced, the stale one dropped, the rest kept")
			assert.JSONEq(t, `{"data.app.env":["DB_PASSWORD","DB_USER"]}`, s.Annotations[mutate.AnnotationExpanded])
			assert.Equal(t, "data.DB_PASSWORD,data.DB_USER", s.Annotations[mutate.AnnotationDecrypted])
		},
	},
	{
		name: "secret-expand-collision",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			s := secret("app", map[string][]byte{"app.env": g.enc(t, plainEnv, "dotenv"), "DB_USER": []byte("taken")})
			s.Annotations = map[string]string{mutate.AnnotationExpand: "true"}
			return request(t, "Secret", admissionv1.Create, s)
		},
	},
	{
		name: "secret-expand-nested",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			s := secret("app", map[string][]byte{"config.yaml": g.enc(t, plainYAML, "yaml")})
			s.Annotations = map[string]string{mutate.AnnotationExpand: "true"}
			return request(t, "Secret", admissionv1.Create, s)
		},
	},
	{
		name: "secret-expand-bad-value",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			s := secret("app", map[string][]byte{"app.env": g.enc(t, plainEnv, "dotenv")})
			s.Annotations = map[string]string{mutate.AnnotationExpand: "yes"}
			return request(t, "Secret", admissionv1.Create, s)
		},
	},
	{
		name: "secret-helm-release",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			s := secret("sh.helm.release.v1.app.v1", map[string][]byte{"release": g.enc(t, plainEnv, "dotenv")})
			s.Type = mutate.HelmReleaseSecretType
			return request(t, "Secret", admissionv1.Create, s)
		},
	},
	{
		name: "configmap-data-and-binarydata",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			return request(t, "ConfigMap", admissionv1.Create, &corev1.ConfigMap{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
				ObjectMeta: metav1.ObjectMeta{Name: "settings", Namespace: "team-a", Annotations: map[string]string{"a/b~c": "x"}},
				Data:       map[string]string{"settings.json": string(g.enc(t, plainJSON, "json")), "plain": "x"},
				BinaryData: map[string][]byte{"blob": g.enc(t, plainBin, "binary")},
			})
		},
		check: func(t *testing.T, patched []byte) {
			var c corev1.ConfigMap
			require.NoError(t, json.Unmarshal(patched, &c))
			assert.JSONEq(t, plainJSON, c.Data["settings.json"])
			assert.Equal(t, plainBin, string(c.BinaryData["blob"]))
			assert.Equal(t, "x", c.Annotations["a/b~c"])
		},
	},
	{
		name: "configmap-binary-plaintext-in-data",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			return request(t, "ConfigMap", admissionv1.Create, &corev1.ConfigMap{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
				ObjectMeta: metav1.ObjectMeta{Name: "blob", Namespace: "team-a"},
				Data:       map[string]string{"blob": string(g.enc(t, plainBin, "binary"))},
			})
		},
	},
	{
		name: "pod-ignored",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			r := request(t, "Secret", admissionv1.Create, secret("x", nil))
			r.Kind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}
			return r
		},
	},
	{
		name: "secret-delete-ignored",
		build: func(t *testing.T, g *generator) admissionv1.AdmissionRequest {
			r := request(t, "Secret", admissionv1.Create, secret("app", map[string][]byte{"app.env": g.enc(t, plainEnv, "dotenv")}))
			r.Operation = admissionv1.Delete
			return r
		},
	},
}

func TestHandlerGolden(t *testing.T) {
	var g *generator
	if *update {
		g = &generator{key: sopskit.NewAgeKey(t, false), other: sopskit.NewAgeKey(t, false)}
		raw, err := os.ReadFile(g.key.IdentityFile)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(goldenKey, append([]byte("# TEST ONLY: golden fixture key, regenerated by go test -update\n"), raw...), 0o600))
	}
	src, err := keysource.LoadAge("golden", goldenKey)
	require.NoError(t, err, "golden key missing; run go test ./pkg/mutate -run TestHandlerGolden -update")
	ring, err := keysource.NewRing(src)
	require.NoError(t, err)
	h := mutate.NewHandler(static(mutate.Engine{Decryptor: decrypt.New(ring)}))

	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			reqFile := filepath.Join(goldenDir, tc.name+".request.json")
			respFile := filepath.Join(goldenDir, tc.name+".response.json")
			var review admissionv1.AdmissionReview
			if *update {
				r := tc.build(t, g)
				review = admissionv1.AdmissionReview{
					TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
					Request:  &r,
				}
				writeJSON(t, reqFile, review)
			}
			body, err := os.ReadFile(reqFile)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(body, &review))

			resp := h.Handle(context.Background(), admission.Request{AdmissionRequest: *review.Request})
			require.NoError(t, resp.Complete(admission.Request{AdmissionRequest: *review.Request}))
			got := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: &resp.AdmissionResponse}
			if *update {
				writeJSON(t, respFile, got)
			}
			want, err := os.ReadFile(respFile)
			require.NoError(t, err)
			gotJSON := marshal(t, got)
			if !assert.JSONEq(t, string(want), string(gotJSON)) {
				t.Logf("patch got:  %s", resp.Patch)
			}
			// The webhook's server decodes the review itself: the same
			// request file posted to it gets the same answer.
			served := serve(t, mutate.NewServer(h, mutate.Gate{}), body)
			assert.Equal(t, http.StatusOK, served.Code)
			assert.JSONEq(t, string(want), served.Body.String(), "ServeHTTP answered otherwise than Handle")

			for _, s := range []string{"s3cr3t"} {
				assert.NotContains(t, messageOf(resp), s, "plaintext in the admission message")
			}
			if tc.check != nil {
				require.True(t, resp.Allowed, "denied: %s", messageOf(resp))
				require.NotEmpty(t, resp.Patch)
				patch, err := jsonpatch.DecodePatch(resp.Patch)
				require.NoError(t, err)
				patched, err := patch.Apply(review.Request.Object.Raw)
				require.NoError(t, err)
				tc.check(t, patched)
			}
		})
	}
}

// serve posts body to h's ServeHTTP as the API server does.
func serve(t testing.TB, h http.Handler, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, req)
	return rec
}

func messageOf(r admission.Response) string {
	if r.Result == nil {
		return ""
	}
	return r.Result.Message
}

func marshal(t *testing.T, v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	require.NoError(t, err)
	return append(b, '\n')
}

func writeJSON(t *testing.T, path string, v any) {
	require.NoError(t, os.WriteFile(path, marshal(t, v), 0o644))
}
