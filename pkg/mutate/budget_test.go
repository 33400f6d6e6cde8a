package mutate_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/metrics"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// dotenvDocument is a value Detect takes for a dotenv SOPS document, of
// about n bytes.
func dotenvDocument(n int) []byte {
	tail := "sops_version=3.13.3\nsops_mac=ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\n"
	return append(bytes.Repeat([]byte("A=ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\n"), max(n-len(tail), 0)/46), tail...)
}

// TestBudget holds the large lane of the decryption budget, as a flood of
// large documents would: a large document is refused at once as busy
// (retryable, counted) without being decrypted; a small document, and an
// object without SOPS content however large, pass.
func TestBudget(t *testing.T) {
	b := budget.New(budget.Config{Bytes: 4 << 20, LargeSlots: 1, Wait: 50 * time.Millisecond})
	large := b.Lanes()[1]
	hold, err := large.Acquire(context.Background(), large.Capacity())
	require.NoError(t, err)
	defer hold()

	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	require.NoError(t, err)
	require.NoError(t, m.WatchLanes(b.Lanes()...))
	d := &fakeDecryptor{}
	h := mutate.NewHandler(static(mutate.Engine{Decryptor: d}), mutate.WithMetrics(m), mutate.WithBudget(b))
	handle := func(data map[string][]byte) admission.Response {
		return h.Handle(context.Background(), admission.Request{AdmissionRequest: request(t, "Secret", admissionv1.Create, secret("app", data))})
	}

	t.Run("a large document waits, then is refused as busy", func(t *testing.T) {
		resp := handle(map[string][]byte{"big.env": dotenvDocument(512 << 10)})
		require.False(t, resp.Allowed)
		msg := messageOf(resp)
		assert.EqualValues(t, http.StatusServiceUnavailable, resp.Result.Code, msg)
		assert.Contains(t, msg, "sops-webhook: could not decrypt Secret team-a/app: the webhook is busy decrypting ")
		assert.Contains(t, msg, "the request is not at fault: retry it")
		assert.Zero(t, d.calls.Load(), "nothing is decrypted before it is admitted")
		assert.Equal(t, 1.0, counter(t, reg, "sops_webhook_budget_refusals_total", map[string]string{"lane": "large"}))
		assert.Equal(t, 1.0, counter(t, reg, "sops_webhook_admission_requests_total", map[string]string{"kind": "Secret", "operation": "CREATE", "outcome": metrics.OutcomeErrored}))
	})
	t.Run("a small document does not wait behind it", func(t *testing.T) {
		resp := handle(map[string][]byte{"app.env": dotenvDocument(1 << 10)})
		require.True(t, resp.Allowed, messageOf(resp))
		assert.NotEmpty(t, resp.Patches)
		assert.EqualValues(t, 1, d.calls.Load())
		assert.Zero(t, b.Lanes()[0].InFlight(), "the small lane is given back")
	})
	t.Run("a small document dense in structure is weighed by its items", func(t *testing.T) {
		// 39 KB, under budget.SmallWeight by size; 26,000 items weigh
		// 1.8 MiB, so it goes to the large lane, which is held.
		dense := append(bytes.Repeat([]byte("a=\n"), 13_000), dotenvDocument(0)...)
		require.Less(t, len(dense), budget.SmallWeight)
		calls := d.calls.Load()
		resp := handle(map[string][]byte{"dense.env": dense})
		require.False(t, resp.Allowed)
		assert.EqualValues(t, http.StatusServiceUnavailable, resp.Result.Code, messageOf(resp))
		assert.Equal(t, calls, d.calls.Load(), "nothing is decrypted before it is admitted")
		assert.Equal(t, 2.0, counter(t, reg, "sops_webhook_budget_refusals_total", map[string]string{"lane": "large"}))
	})
	t.Run("an object without SOPS content is never weighed", func(t *testing.T) {
		small := b.Lanes()[0]
		fill, err := small.Acquire(context.Background(), small.Capacity())
		require.NoError(t, err)
		defer fill()
		resp := handle(map[string][]byte{"blob": bytes.Repeat([]byte("x"), 900<<10)})
		require.True(t, resp.Allowed)
		assert.Empty(t, resp.Patches)
	})
	t.Run("the lanes are exported", func(t *testing.T) {
		assert.Equal(t, float64(large.Capacity()), counter(t, reg, "sops_webhook_budget_in_flight_bytes", map[string]string{"lane": "large"}))
		assert.Equal(t, 0.0, counter(t, reg, "sops_webhook_budget_refusals_total", map[string]string{"lane": "small"}))
	})
}

// TestGate holds the body lane, then the handling lane: a large
// request is answered at once, as a review with a retryable 503 result when
// its head can be read, else with a retryable Kubernetes Status; a refused
// body is never handed on; a small body passes both, and a large one
// without a SOPS marker passes the handling lane.
func TestGate(t *testing.T) {
	lane := budget.NewLane("bodies", "reading", 1<<20, 0, 50*time.Millisecond)
	handling := budget.NewLane("heavy", "handling", 1<<20, 1, 50*time.Millisecond)
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	require.NoError(t, err)
	var served atomic.Int64
	srv := httptest.NewServer(mutate.NewProbeServer(mutate.Gate{Bodies: lane, Handling: handling, Metrics: m}, func(http.ResponseWriter, *http.Request, []byte) {
		served.Add(1)
	}))
	defer srv.Close()
	postBody := func(body []byte) *http.Response {
		resp, err := http.Post(srv.URL, "application/json", bytes.NewReader(body))
		require.NoError(t, err)
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	post := func(n int) *http.Response { return postBody(withMarker(n)) }
	statusRefusal := func(resp *http.Response) string {
		t.Helper()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		var st metav1.Status
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
		assert.Equal(t, "Status", st.Kind)
		assert.Equal(t, metav1.StatusReasonServiceUnavailable, st.Reason)
		return st.Message
	}
	// A review is refused as a review, so that the API server passes on a
	// 503 rather than a failed call.
	review, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "big-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Secret"}, Operation: admissionv1.Create,
			Namespace: "team-a", Name: "big", Object: runtime.RawExtension{Raw: []byte(`{"data":{"a":"` + base64.StdEncoding.EncodeToString(withMarker(256<<10)) + `"}}`)},
		},
	})
	require.NoError(t, err)
	reviewRefusal := func(resp *http.Response) string {
		t.Helper()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var answer admissionv1.AdmissionReview
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&answer))
		assert.Equal(t, "admission.k8s.io/v1", answer.APIVersion)
		require.NotNil(t, answer.Response)
		assert.EqualValues(t, "big-1", answer.Response.UID)
		assert.False(t, answer.Response.Allowed)
		require.NotNil(t, answer.Response.Result)
		assert.EqualValues(t, http.StatusServiceUnavailable, answer.Response.Result.Code)
		return answer.Response.Result.Message
	}
	refusals := func(lane string) float64 {
		return counter(t, reg, "sops_webhook_budget_refusals_total", map[string]string{"lane": lane})
	}

	hold, err := lane.Acquire(context.Background(), lane.Capacity())
	require.NoError(t, err)
	assert.Contains(t, statusRefusal(post(256<<10)), "sops-webhook: the webhook is busy reading 1.0 MiB; the request is not at fault: retry it",
		"a body that is no review is refused with a Status")
	assert.Equal(t, "sops-webhook: could not decrypt Secret team-a/big: the webhook is busy reading 1.0 MiB; the request is not at fault: retry it",
		reviewRefusal(postBody(review)), "an unread review is answered from its head")
	assert.Zero(t, served.Load(), "a refused body is never handed on")
	assert.Equal(t, 2.0, refusals("bodies"))
	require.Equal(t, http.StatusOK, post(4<<10).StatusCode, "a small body passes a full lane")
	hold()

	hold, err = handling.Acquire(context.Background(), 512<<10)
	require.NoError(t, err)
	assert.Contains(t, statusRefusal(post(256<<10)), "sops-webhook: the webhook is busy handling 0.5 MiB; the request is not at fault: retry it",
		"a body that is no review is refused with a Status")
	assert.Equal(t, "sops-webhook: could not decrypt Secret team-a/big: the webhook is busy handling 0.5 MiB; the request is not at fault: retry it",
		reviewRefusal(postBody(review)))
	assert.Equal(t, 2.0, refusals("heavy"))
	assert.Equal(t, 2.0, counter(t, reg, "sops_webhook_admission_requests_total", map[string]string{"kind": "Secret", "operation": "CREATE", "outcome": "errored"}))
	require.Equal(t, http.StatusOK, post(4<<10).StatusCode, "a small body passes while every handling slot is taken")
	require.Equal(t, http.StatusOK, postBody(make([]byte, 256<<10)).StatusCode, "a large body without a SOPS marker needs no handling slot")
	hold()

	require.Equal(t, http.StatusOK, post(256<<10).StatusCode)
	assert.EqualValues(t, 4, served.Load())
	assert.Zero(t, lane.InFlight())
	assert.Zero(t, handling.InFlight())
}

// withMarker returns n bytes that begin with a SOPS marker.
func withMarker(n int) []byte {
	b := make([]byte, n)
	copy(b, "ENC[AES256_GCM,data:")
	return b
}

// TestGateHandlesLargeRequestsInSlots sends large requests at once
// through a gate with two handling slots: never more than two are handled
// together, every one is answered; and a client that does not read its
// answer holds no slot.
func TestGateHandlesLargeRequestsInSlots(t *testing.T) {
	const slots, senders = 2, 8
	bodies := budget.NewLane("bodies", "reading", 64<<20, 0, 10*time.Second)
	handling := budget.NewLane("heavy", "handling", 64<<20, slots, 10*time.Second)
	m, err := metrics.New(prometheus.NewRegistry())
	require.NoError(t, err)
	var running, most atomic.Int64
	answer := bytes.Repeat([]byte("x"), 16<<20) // more than the sockets buffer
	srv := httptest.NewServer(mutate.NewProbeServer(mutate.Gate{Bodies: bodies, Handling: handling, Metrics: m}, func(w http.ResponseWriter, r *http.Request, body []byte) {
		n := running.Add(1)
		defer running.Add(-1)
		for old := most.Load(); n > old && !most.CompareAndSwap(old, n); old = most.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		if r.URL.Path == "/big" {
			_, _ = w.Write(answer)
			return
		}
		_, _ = w.Write(body[:1])
	}))
	defer srv.Close()
	post := func(path string) (*http.Response, error) {
		return http.Post(srv.URL+path, "application/json", bytes.NewReader(withMarker(256<<10)))
	}

	errs := make(chan error, senders)
	for range senders {
		go func() {
			resp, err := post("/")
			if err == nil {
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("HTTP %d", resp.StatusCode)
				}
			}
			errs <- err
		}()
	}
	for range senders {
		require.NoError(t, <-errs)
	}
	assert.EqualValues(t, slots, most.Load(), "large requests are handled at most a slot each at once")

	unread, err := post("/big")
	require.NoError(t, err)
	defer unread.Body.Close()
	require.Eventually(t, func() bool { return handling.InFlight() == 0 }, 5*time.Second, 10*time.Millisecond,
		"an answer not yet read holds its handling slot")
	for range slots {
		resp, err := post("/")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	n, err := io.Copy(io.Discard, unread.Body)
	require.NoError(t, err)
	assert.EqualValues(t, len(answer), n, "the buffered answer arrives whole")
}

// TestGateAdmitsBytesAsTheyArrive announces large bodies and sends
// little or nothing: the bodies lane admits only what arrived (fourfold at
// most), an idle announcement holds nothing, and a body that does not
// arrive within the deadline is answered 408 and its admission given back,
// while another client's request is answered meanwhile.
func TestGateAdmitsBytesAsTheyArrive(t *testing.T) {
	bodies := budget.NewLane("bodies", "reading", 64<<20, 0, time.Second)
	handling := budget.NewLane("heavy", "handling", 64<<20, 1, time.Second)
	m, err := metrics.New(prometheus.NewRegistry())
	require.NoError(t, err)
	const deadline = 700 * time.Millisecond
	srv := httptest.NewServer(mutate.NewProbeServer(mutate.Gate{Bodies: bodies, Handling: handling, Metrics: m, Deadline: deadline},
		func(http.ResponseWriter, *http.Request, []byte) {}))
	defer srv.Close()

	// announce opens a connection that announces n bytes and sends sent.
	announce := func(n int, sent []byte) net.Conn {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", n)
		require.NoError(t, err)
		_, err = c.Write(sent)
		require.NoError(t, err)
		return c
	}
	idle := announce(3<<20, nil)
	time.Sleep(100 * time.Millisecond)
	assert.Zero(t, bodies.InFlight(), "an announced body that was not sent holds nothing")

	trickle := announce(3<<20, withMarker(20<<10))
	require.Eventually(t, func() bool { return bodies.InFlight() > 0 }, time.Second, 5*time.Millisecond)
	assert.EqualValues(t, 3*budget.FreeBodyBytes, bodies.InFlight(), "20 KiB sent of 3 MiB announced: one fourfold buffer admitted, less the connection's free part")

	resp, err := http.Post(srv.URL, "application/json", bytes.NewReader(withMarker(512<<10)))
	require.NoError(t, err, "another client is answered meanwhile")
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	for _, c := range []net.Conn{idle, trickle} {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		status, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err, "answered when the deadline passed")
		assert.Equal(t, "HTTP/1.1 408 Request Timeout\r\n", status)
	}
	assert.Zero(t, bodies.InFlight(), "given back after the deadline")
}

// TestHostileSmallRequestIsBounded sends the small requests of
// BenchmarkWorstSmallRequest, built with only the webhook's public
// recipient: each is denied as too much work, after at most
// keysource.MaxFailedUnwrapsPerRequest unwraps, where every listed master
// key used to be tried.
func TestHostileSmallRequestIsBounded(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	src, err := keysource.LoadAge("k", key.IdentityFile)
	require.NoError(t, err)
	require.Equal(t, mutate.MaxDocumentsPerObject+1, keysource.MaxUnwrapsPerRequest, "every document of an object, and a values file, may need its own unwrap")
	for _, stanzas := range []int{1, 4, 40} {
		t.Run(fmt.Sprintf("%d stanzas", stanzas), func(t *testing.T) {
			var unwraps atomic.Int64
			ring, err := keysource.NewRingWith([]keysource.Source{src}, []keysource.RingOption{keysource.WithStats(keysource.Stats{
				Unwrap: func(string, bool) { unwraps.Add(1) },
			})})
			require.NoError(t, err)
			h := mutate.NewHandler(static(mutate.Engine{Decryptor: decrypt.New(ring)}))
			resp := h.Handle(context.Background(), admission.Request{AdmissionRequest: hostileSmallRequest(t, key, stanzas)})
			require.False(t, resp.Allowed)
			assert.EqualValues(t, http.StatusForbidden, resp.Result.Code, "the request's fault")
			assert.Contains(t, resp.Result.Message, "its keys ask more unwraps than one request may start")
			assert.LessOrEqual(t, unwraps.Load(), int64(keysource.MaxFailedUnwrapsPerRequest))
		})
	}
}
