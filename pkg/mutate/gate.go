package mutate

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
)

// MaxReviewSize is the largest AdmissionReview body the webhook reads:
// controller-runtime's limit, room for an object and its old version at the
// API server's 3 MiB request limit each. A body of unknown length is
// weighed as this much.
const MaxReviewSize = 7 << 20

// BodyGate holds back requests whose body is heavier than
// budget.SmallWeight, weighed by their Content-Length, in two steps before
// next sees them:
//
//   - bodies admits the body before it is read, so the bodies a replica
//     holds at once stay within that lane whatever the API server sends;
//   - handling admits the read request, if its body holds a SOPS marker
//     (plain or base64), to be handled: its slots are how many large
//     requests are decoded, decrypted and encoded at once. With one fewer
//     slot than processors, a processor is always left to the light
//     requests, which the Go scheduler would otherwise leave waiting behind
//     a large request's decoding for up to its 10 ms time slice. A large
//     body without a marker has nothing to decrypt and is passed on
//     without a slot; one that hides a marker from this screen is still
//     bounded by the decryption budget.
//
// Both steps share one wait. The answer is buffered and written after the
// handling slot is given back, so a client slow to read it holds no slot.
// A request not admitted in time is answered at once as a review, with the
// same retryable refusal the decryption budget gives (a 503 result), its
// uid and names read from the review's head without decoding its objects:
// from the body when it was read, else from its first peekLimit bytes.
// A body whose head cannot be read so is answered with 503 and a
// Kubernetes Status instead, which the API server reports as a failed
// call. Light bodies, which are almost every request, pass straight
// through.
func BodyGate(bodies, handling *budget.Lane, m *Metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		n := r.ContentLength
		if n < 0 || n > MaxReviewSize {
			n = MaxReviewSize
		}
		if n <= budget.SmallWeight {
			next.ServeHTTP(w, r)
			return
		}
		// busy refuses the request; head is the start of its body, or all
		// of it.
		busy := func(err error, head []byte) {
			m.observeBusy(err)
			if h, ok := peekReview(head); ok {
				writeBusyReview(w, h, err, m, start)
				return
			}
			writeStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
				"sops-webhook: "+err.Error()+"; the request is not at fault: retry it")
		}
		// One deadline for both steps: the request's wait for admission is
		// the lanes' wait, not twice that.
		ctx, cancel := context.WithTimeout(r.Context(), max(bodies.Wait(), handling.Wait()))
		defer cancel()
		releaseBody, err := bodies.Acquire(ctx, n)
		if err != nil {
			// Only the head is read, and the connection closed after
			// the answer, so the refused body is never held.
			w.Header().Set("Connection", "close")
			head, _ := io.ReadAll(io.LimitReader(r.Body, peekLimit))
			busy(err, head)
			return
		}
		defer releaseBody()
		// A body past the limit is handed on as read, one byte over it,
		// for next to refuse as too large.
		body, err := readAll(r.Body, r.ContentLength)
		if err != nil && !errors.Is(err, errTooLarge) {
			writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "sops-webhook: reading the request body: "+err.Error())
			return
		}
		marked := mayHoldSOPS(body, true)
		r.Body = &readBodyOnce{data: body, marked: marked}
		if !marked {
			// Nothing to decrypt: a large object without SOPS content is
			// passed through like a light one.
			next.ServeHTTP(w, r)
			return
		}
		releaseHandling, err := handling.Acquire(ctx, n)
		if err != nil {
			busy(err, body)
			return
		}
		answer := &bufferedResponse{header: http.Header{}}
		next.ServeHTTP(answer, r)
		releaseHandling()
		answer.writeTo(w)
	})
}

// writeBusyReview answers the review head belongs to with the retryable
// refusal of a budget's busy error, as the handler does when the decryption
// budget has no room: a 503 result, which the API server passes on as the
// webhook's answer, where a Status would make it a failed call.
func writeBusyReview(w http.ResponseWriter, head reviewHead, busy error, m *Metrics, start time.Time) {
	resp := (&refusal{err: busy}).response(object{kind: head.kind.Kind, namespace: head.namespace, name: head.name})
	resp.UID = head.uid
	m.observeRequest(head.request(), resp, time.Since(start))
	writeReview(w, head.apiVersion, resp)
}

// peekLimit is how much of a refused, unread body is read to answer it as
// a review: the API server writes the request's uid, kinds, names,
// operation and user before its objects, in far less than this.
const peekLimit = 16 << 10

// bufferedResponse keeps an answer in memory until it is written.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

// writeTo sends the kept answer to w; a client that went away is no
// longer ours to answer.
func (b *bufferedResponse) writeTo(w http.ResponseWriter) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	w.WriteHeader(cmp.Or(b.code, http.StatusOK))
	_, _ = w.Write(b.body.Bytes())
}

// writeStatus answers with a Kubernetes Status, which the API server's
// client reads as the error's message.
func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	body, err := json.Marshal(metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: msg, Reason: reason, Code: int32(code),
	})
	if err != nil {
		http.Error(w, msg, code)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Connection", "close")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
