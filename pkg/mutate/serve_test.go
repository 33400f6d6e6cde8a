package mutate_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/metrics"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
)

// goldenHandler is a handler with the golden fixtures' key.
func goldenHandler(t testing.TB, opts ...mutate.Option) *mutate.Handler {
	src, err := keysource.LoadAge("golden", goldenKey)
	require.NoError(t, err)
	ring, err := keysource.NewRing(src)
	require.NoError(t, err)
	return mutate.NewHandler(static(mutate.Engine{Decryptor: decrypt.New(ring)}), opts...)
}

// goldenRequests are the bodies of every golden request file.
func goldenRequests(t testing.TB) [][]byte {
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.request.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no golden requests")
	bodies := make([][]byte, len(files))
	for i, file := range files {
		bodies[i], err = os.ReadFile(file)
		require.NoError(t, err)
	}
	return bodies
}

// goldenRequest is a golden request file, with its Secret's body edited by
// edit (nil keeps it).
func goldenRequest(t testing.TB, name string, edit func(string) string) []byte {
	body, err := os.ReadFile(filepath.Join(goldenDir, name+".request.json"))
	require.NoError(t, err)
	if edit != nil {
		body = []byte(edit(string(body)))
	}
	return body
}

// TestServeHTTP covers what the webhook's server reads beyond Handle's
// flow, which TestHandlerGolden checks through it: the review's version,
// bodies that are not reviews, and objects that do not decode. No answer
// quotes the body.
func TestServeHTTP(t *testing.T) {
	const canary = "canary-s3cr3t"
	tests := []struct {
		name        string
		contentType string
		body        []byte
		// unannounced sends the body without a Content-Length.
		unannounced bool
		// status is the HTTP status (200 for every review answered).
		status int
		// code is the response's result code; uid says the request was
		// read.
		code       int32
		uid        bool
		apiVersion string
		contains   string
		// counted: the request is in admission_requests_total, as one the
		// handler answered.
		counted bool
	}{
		{
			name: "v1beta1 is answered in v1beta1",
			body: goldenRequest(t, "secret-documents", func(s string) string {
				return strings.Replace(s, `"admission.k8s.io/v1"`, `"admission.k8s.io/v1beta1"`, 1)
			}),
			status: 200, code: 200, uid: true, apiVersion: "admission.k8s.io/v1beta1", counted: true,
		},
		{
			name: "a review without apiVersion and kind is taken as v1",
			body: goldenRequest(t, "secret-documents", func(s string) string {
				s = strings.Replace(s, `"kind": "AdmissionReview",`, "", 1)
				return strings.Replace(s, `"apiVersion": "admission.k8s.io/v1",`, "", 1)
			}),
			status: 200, code: 200, uid: true, apiVersion: "admission.k8s.io/v1", counted: true,
		},
		{
			name: "a body without a Content-Length", unannounced: true,
			body:   goldenRequest(t, "secret-documents", nil),
			status: 200, code: 200, uid: true, apiVersion: "admission.k8s.io/v1", counted: true,
		},
		{
			name: "larger than a review can be, without a Content-Length", unannounced: true,
			body:   bytes.Repeat([]byte(" "), mutate.MaxReviewSize+1),
			status: 200, code: 413, apiVersion: "admission.k8s.io/v1", contains: "larger than",
		},
		{
			name:   "another kind",
			body:   []byte(`{"apiVersion":"v1","kind":"Secret","data":{"a":"` + canary + `"}}`),
			status: 200, code: 400, apiVersion: "admission.k8s.io/v1", contains: `a "Secret", not an AdmissionReview`,
		},
		{
			name:   "another version",
			body:   []byte(`{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview","request":{"uid":"u"}}`),
			status: 200, code: 400, apiVersion: "admission.k8s.io/v1", contains: "not served",
		},
		{
			name:   "no request",
			body:   []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`),
			status: 200, code: 400, apiVersion: "admission.k8s.io/v1", contains: "holds no request",
		},
		{
			// The body is decoded with the object when it holds a marker
			// anywhere (here the base64 marker).
			name:   "no request, with a SOPS marker",
			body:   []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","x":"RU5DW0FFUzI1Nl9HQ00sZGF0"}`),
			status: 200, code: 400, apiVersion: "admission.k8s.io/v1", contains: "holds no request",
		},
		{
			name:   "not JSON",
			body:   []byte(`{"apiVersion":"admission.k8s.io/v1","request":{"uid":"u","object":{"data":{"a":` + canary + `}}}}`),
			status: 200, code: 400, apiVersion: "admission.k8s.io/v1", contains: "not valid JSON (at byte",
		},
		{
			name:   "empty body",
			body:   []byte{},
			status: 200, code: 400, apiVersion: "admission.k8s.io/v1", contains: "body is empty",
		},
		{
			name:   "larger than a review can be",
			body:   bytes.Repeat([]byte(" "), mutate.MaxReviewSize+1),
			status: 200, code: 413, apiVersion: "admission.k8s.io/v1", contains: "larger than",
		},
		{
			name: "content type", contentType: "text/plain",
			body:   goldenRequest(t, "secret-documents", nil),
			status: 200, code: 400, apiVersion: "admission.k8s.io/v1", contains: `content type "text/plain"`,
		},
		{
			// The object is read with the review when the body holds a
			// marker: an object that does not decode is that request's
			// bad object, refused with its uid.
			name: "Secret data that is not base64",
			body: goldenRequest(t, "secret-documents", func(s string) string {
				return strings.Replace(s, `"data": {`, `"data": {"bad": "`+canary+`!",`, 1)
			}),
			status: 200, code: 400, uid: true, apiVersion: "admission.k8s.io/v1", contains: "field data.bad is not base64", counted: true,
		},
		{
			name: "Secret data of the wrong JSON type",
			body: goldenRequest(t, "secret-documents", func(s string) string {
				return strings.Replace(s, `"data": {`, `"data": {"bad": 7,`, 1)
			}),
			status: 200, code: 400, uid: true, apiVersion: "admission.k8s.io/v1", contains: "field request.object.data holds a value of the wrong JSON type", counted: true,
		},
		{
			// Refused before the map is built: decoding a map costs about
			// 200 bytes an entry.
			name: "a map of more than MaxObjectKeys entries",
			body: goldenRequest(t, "secret-documents", func(s string) string {
				var many strings.Builder
				for i := range mutate.MaxObjectKeys + 1 {
					fmt.Fprintf(&many, `"k%d": "",`, i)
				}
				return strings.Replace(s, `"data": {`, `"data": {`+many.String(), 1)
			}),
			status: 200, code: 400, uid: true, apiVersion: "admission.k8s.io/v1", contains: "a map holds more than 8192 entries", counted: true,
		},
		{
			// Only the object is read: an old object is skipped whatever
			// it holds.
			name: "an old object is never decoded",
			body: goldenRequest(t, "secret-documents", func(s string) string {
				return strings.Replace(s, `"oldObject": null`, `"oldObject": {"data": {"a": 7}, "metadata": "`+canary+`"}`, 1)
			}),
			status: 200, code: 200, uid: true, apiVersion: "admission.k8s.io/v1", counted: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := metrics.New(reg)
			require.NoError(t, err)
			srv := mutate.NewServer(goldenHandler(t, mutate.WithMetrics(m)), mutate.Gate{})
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			if tc.unannounced {
				req.ContentLength = -1
			}
			srv.ServeHTTP(rec, req)
			require.Equal(t, tc.status, rec.Code)
			assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
			var got admissionv1.AdmissionReview
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got), rec.Body.String())
			require.NotNil(t, got.Response)
			assert.Equal(t, tc.apiVersion, got.APIVersion)
			assert.Equal(t, "AdmissionReview", got.Kind)
			require.NotNil(t, got.Response.Result)
			assert.Equal(t, tc.code, got.Response.Result.Code, got.Response.Result.Message)
			assert.Equal(t, tc.code == 200, got.Response.Allowed)
			assert.Equal(t, tc.uid, got.Response.UID != "", "uid %q", got.Response.UID)
			assert.Contains(t, got.Response.Result.Message, tc.contains)
			assert.NotContains(t, rec.Body.String(), "s3cr3t", "the answer quotes the body")
			var counted float64
			for _, outcome := range []string{"skipped", "patched", "denied", "errored"} {
				counted += counter(t, reg, "sops_webhook_admission_requests_total", map[string]string{"kind": "Secret", "operation": "CREATE", "outcome": outcome})
			}
			assert.Equal(t, tc.counted, counted == 1, "admission_requests_total: %v", counted)
		})
	}
}

// FuzzServeHTTP posts arbitrary bodies, seeded with every golden request,
// to the webhook's server and to controller-runtime's admission server with
// the same handler: where controller-runtime reads a review, the webhook's
// own decoding must give the same answer. It may refuse more: a body that
// does not say it is an AdmissionReview of a version it serves, a review
// without a request, and, when the body holds a SOPS marker anywhere, an
// object that does not decode (controller-runtime's path decodes the object
// only when the object itself holds one). Neither may fail internally or
// quote the golden plaintexts.
func FuzzServeHTTP(f *testing.F) {
	h := goldenHandler(f)
	ours, theirs := mutate.NewServer(h, mutate.Gate{}), &webhook.Admission{Handler: h}
	for _, body := range goldenRequests(f) {
		f.Add(body)
	}
	answer := func(t *testing.T, h http.Handler, body []byte) admissionv1.AdmissionResponse {
		rec := serve(t, h, body)
		var got admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || got.Response == nil {
			t.Fatalf("not a review answer (%d): %s", rec.Code, rec.Body)
		}
		if bytes.Contains(rec.Body.Bytes(), []byte("s3cr3t")) {
			t.Fatalf("the answer quotes a plaintext: %s", rec.Body)
		}
		return *got.Response
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := answer(t, ours, body)
		if got.Result != nil && got.Result.Code == http.StatusInternalServerError {
			t.Fatalf("the webhook failed internally: %s", got.Result.Message)
		}
		want := answer(t, theirs, body)
		if want.UID == "" || (want.Result != nil && want.Result.Code == http.StatusBadRequest) {
			// controller-runtime did not read a review, or the handler
			// found its object bad.
			return
		}
		if got.UID == "" {
			// The webhook reads only reviews that say they are one, in
			// a version it serves, with a request; controller-runtime
			// fills in what a body leaves out.
			if msg := got.Result.Message; !strings.Contains(msg, "not an AdmissionReview") && !strings.Contains(msg, "is not served") && !strings.Contains(msg, "holds no request") {
				t.Fatalf("controller-runtime read the review, the webhook did not: %s", msg)
			}
			return
		}
		if got.Result != nil && got.Result.Code == http.StatusBadRequest && mutateAllowedUnread(want) {
			return
		}
		assert.Equal(t, want, got)
	})
}

// mutateAllowedUnread says a response is the handler's answer to an object
// it did not decode.
func mutateAllowedUnread(r admissionv1.AdmissionResponse) bool {
	return r.Allowed && r.Result != nil && r.Result.Message == "no SOPS content"
}

// panicOnRead is a request body whose Read panics with a value that quotes
// a plaintext: a stand-in for any panic while a review is read or answered,
// outside the handler's own recovery.
type panicOnRead struct{}

func (panicOnRead) Read([]byte) (int, error) { panic("plaintext: canary-s3cr3t") }

func TestServeHTTPRecovers(t *testing.T) {
	var logs strings.Builder
	h := goldenHandler(t, mutate.WithLogger(funcr.New(func(prefix, args string) { logs.WriteString(prefix + args + "\n") }, funcr.Options{})))
	req := httptest.NewRequest(http.MethodPost, "/mutate", io.NopCloser(panicOnRead{}))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	mutate.NewServer(h, mutate.Gate{}).ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code)
	var got admissionv1.AdmissionReview
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got), rec.Body.String())
	require.NotNil(t, got.Response)
	require.NotNil(t, got.Response.Result)
	assert.False(t, got.Response.Allowed)
	assert.Equal(t, int32(http.StatusInternalServerError), got.Response.Result.Code)
	assert.Equal(t, "sops-webhook: internal error", got.Response.Result.Message)
	assert.NotContains(t, rec.Body.String(), "s3cr3t")
	assert.Contains(t, logs.String(), "recovered from a panic")
	assert.NotContains(t, logs.String(), "s3cr3t")
}

// TestServeHTTPLogsIDs: a line the handler logs for a request names the
// request by its ids, which the server adds to the request's logger.
func TestServeHTTPLogsIDs(t *testing.T) {
	var logs strings.Builder
	h := goldenHandler(t, mutate.WithLogger(funcr.New(func(prefix, args string) { logs.WriteString(prefix + " " + args + "\n") }, funcr.Options{})))
	rec := serve(t, mutate.NewServer(h, mutate.Gate{}), goldenRequest(t, "secret-tampered", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, logs.String(), `"msg"="refused"`)
	for _, id := range []string{`"requestID"="00000000-0000-0000-0000-000000000`, `"kind"="Secret"`, `"namespace"=`, `"operation"="CREATE"`} {
		assert.Contains(t, logs.String(), id)
	}
}
