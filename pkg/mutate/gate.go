package mutate

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
)

// MaxReviewSize is the largest AdmissionReview body the webhook reads:
// controller-runtime's limit, room for an object and its old version at the
// API server's 3 MiB request limit each. A body of unknown length is
// weighed as this much.
const MaxReviewSize = 7 << 20

// Gate is how BodyGate admits requests.
type Gate struct {
	// Bodies admits the bytes of a body past budget.FreeBodyBytes, as they
	// arrive.
	Bodies *budget.Lane
	// Handling admits a large request that may hold SOPS content to be
	// handled.
	Handling *budget.Lane
	// Deadline bounds reading a request, from its first byte: the
	// webhook's timeoutSeconds, after which the API server has given up
	// anyway. Its answer must be written within answerGrace more. 0 means
	// no deadline.
	Deadline time.Duration
	// Metrics counts refusals; it may be nil.
	Metrics *Metrics
}

// BodyGate reads each request's body within g's budgets before next sees
// it, so that what a replica holds for the bodies it reads stays bounded
// whatever its clients send or announce:
//
//   - the body must arrive within g.Deadline, and the answer be written
//     within answerGrace more;
//   - its first budget.FreeBodyBytes are read without asking a lane (the
//     connection cap accounts for them), which is the whole of almost every
//     review; past them the buffer grows fourfold at a time, each size
//     admitted by g.Bodies before it is allocated. Memory follows the bytes
//     that arrived, never the Content-Length: a client that announces a
//     large body and sends nothing holds nothing, one that trickles holds
//     at most four times what it sent, and only until the deadline;
//   - a body heavier than budget.SmallWeight that holds a SOPS marker
//     (plain or base64) waits for a slot of g.Handling to be handled: its
//     slots are how many large requests are decoded, decrypted and encoded
//     at once. With one fewer slot than processors, a processor is always
//     left to the light requests, which the Go scheduler would otherwise
//     leave waiting behind a large request's decoding for up to its 10 ms
//     time slice. A large body without a marker has nothing to decrypt and
//     is passed on without a slot; one that hides a marker from this
//     screen is still bounded by the decryption budget.
//
// Both lanes share one wait. The answer of a large request is buffered and
// written after its handling slot is given back, so a client slow to read
// it holds no slot. A request not admitted in time is answered at once as a
// review, with the same retryable refusal the decryption budget gives (a
// 503 result), its uid and names read from the review's head without
// decoding its objects. A body whose head cannot be read so is answered
// with 503 and a Kubernetes Status instead, which the API server reports as
// a failed call; one that does not arrive in time with 408.
func BodyGate(g Gate, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if g.Deadline > 0 {
			// Errors mean the connection cannot take deadlines (only in
			// tests' recorders); net/http resets the read deadline for
			// the next request, and every request sets its own.
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(start.Add(g.Deadline))
			_ = rc.SetWriteDeadline(start.Add(g.Deadline + answerGrace))
		}
		// busy refuses the request; head is the start of its body, or all
		// of it.
		busy := func(err error, head []byte) {
			g.Metrics.observeBusy(err)
			if h, ok := peekReview(head); ok {
				writeBusyReview(w, h, err, g.Metrics, start)
				return
			}
			writeStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
				"sops-webhook: "+err.Error()+"; the request is not at fault: retry it")
		}
		// One deadline for both lanes: the request's wait for admission is
		// the lanes' wait, not twice that.
		ctx, cancel := context.WithTimeout(r.Context(), max(g.Bodies.Wait(), g.Handling.Wait()))
		defer cancel()
		// A body past the limit is handed on as read, one byte over it,
		// for next to refuse as too large.
		body, releaseBody, err := readAdmitted(ctx, g.Bodies, r.Body, r.ContentLength)
		defer releaseBody()
		var busyErr *budget.BusyError
		switch {
		case errors.As(err, &busyErr):
			// The rest of the body is never read: the connection is
			// closed after the answer.
			w.Header().Set("Connection", "close")
			busy(err, body)
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			writeStatus(w, http.StatusRequestTimeout, metav1.StatusReasonTimeout,
				fmt.Sprintf("sops-webhook: the request body did not arrive within %s", g.Deadline))
			return
		case err != nil && !errors.Is(err, errTooLarge):
			writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "sops-webhook: "+err.Error())
			return
		}
		marked := mayHoldSOPS(body, true)
		r.Body = &readBodyOnce{data: body, marked: marked}
		if !marked || len(body) <= budget.SmallWeight {
			// Nothing to decrypt, or a light request: passed through.
			next.ServeHTTP(w, r)
			return
		}
		releaseHandling, err := g.Handling.Acquire(ctx, int64(len(body)))
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

// answerGrace is how long past Gate.Deadline an answer may take to be
// written: long enough to tell a client its body came too late.
const answerGrace = time.Second

// bodyGrowth is how many times larger each new buffer for a body is than
// the last: few copies (a third of the body at most), and a trickling
// sender holds at most this many times what it sent.
const bodyGrowth = 4

// readAdmitted reads r to its end as BodyGate describes: the first
// budget.FreeBodyBytes freely, then in buffers admitted by lane (when not
// nil) before they are allocated, growing by bodyGrowth and never past the announced length
// n (a Content-Length; negative if unknown) while the sender keeps to it.
// release gives back what lane admitted; it is never nil. Past
// MaxReviewSize it stops with errTooLarge and the MaxReviewSize+1 bytes
// read. A *budget.BusyError, or a read error, comes with the bytes read
// before it.
func readAdmitted(ctx context.Context, lane *budget.Lane, r io.Reader, n int64) (body []byte, release func(), err error) {
	// held is what lane admitted, in as many admissions as the buffer grew.
	var held []func()
	var admitted int64
	release = func() {
		for _, f := range held {
			f()
		}
		held = nil
	}
	if r == nil {
		return nil, release, errors.New("the request has no body")
	}
	if n < 0 || n > MaxReviewSize {
		n = -1
	}
	// One byte more than announced, so the read that finds the end does
	// not grow the buffer.
	size := int64(budget.FreeBodyBytes)
	if n >= 0 {
		size = min(n+1, size)
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			if len(buf) > MaxReviewSize {
				return buf, release, errTooLarge
			}
			next := min(int64(cap(buf))*bodyGrowth, MaxReviewSize+1)
			if n > int64(len(buf)) {
				next = min(next, n+1)
			}
			// The growth is admitted, up to the lane's capacity: a body
			// larger than the lane reads alone rather than never. The
			// old buffer's admission stays with the new, larger one, so
			// a wait for room never gives back what was read.
			// The first budget.FreeBodyBytes are the connection's.
			if lane != nil {
				if more := min(next-budget.FreeBodyBytes, lane.Capacity()) - admitted; more > 0 {
					rel, err := lane.Acquire(ctx, more)
					if err != nil {
						return buf, release, err
					}
					held, admitted = append(held, rel), admitted+more
				}
			}
			grown := make([]byte, len(buf), next)
			copy(grown, buf)
			buf = grown
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		switch {
		case err == io.EOF:
			return buf, release, nil
		case err != nil:
			return buf, release, fmt.Errorf("reading the request body: %w", err)
		}
	}
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
