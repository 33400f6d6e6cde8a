package mutate

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/metrics"
)

// MaxReviewSize is the largest AdmissionReview body the webhook reads:
// controller-runtime's limit, room for an object and its old version at the
// API server's 3 MiB request limit each. A body of unknown length is
// weighed as this much.
const MaxReviewSize = 7 << 20

// Gate is what bounds the bodies a Server reads, so that what a replica
// holds for them stays bounded whatever its clients send or announce:
//
//   - a body must arrive within Deadline, and its answer be written within
//     answerGrace more;
//   - its first budget.FreeBodyBytes are read without asking a lane (the
//     connection cap accounts for them), which is the whole of almost every
//     review; past them the buffer grows fourfold at a time, each size
//     admitted by Bodies before it is allocated (readAdmitted). Memory
//     follows the bytes that arrived, never the Content-Length: a client
//     that announces a large body and sends nothing holds nothing, one that
//     trickles holds at most four times what it sent, and only until the
//     deadline;
//   - a body heavier than budget.SmallWeight that holds a SOPS marker
//     (plain or base64) waits for a slot of Handling to be handled: its
//     slots are how many large requests are decoded, decrypted and encoded
//     at once. With one fewer slot than processors, a processor is always
//     left to the light requests, which the Go scheduler would otherwise
//     leave waiting behind a large request's decoding for up to its 10 ms
//     time slice. A large body without a marker has nothing to decrypt and
//     is handled without a slot; one that hides a marker from the screen is
//     still bounded by the decryption budget.
//
// A request not admitted in time is answered at once (answerBusy).
type Gate struct {
	// Bodies admits the bytes of a body past budget.FreeBodyBytes, as they
	// arrive; nil admits them all.
	Bodies *budget.Lane
	// Handling is the lane of large requests with SOPS content, labelled
	// "heavy" in the metrics; nil handles them without a slot.
	Handling *budget.Lane
	// Deadline bounds reading a request, from its first byte: the
	// webhook's timeoutSeconds, after which the API server has given up
	// anyway. 0 means no deadline.
	Deadline time.Duration
	// Metrics counts refusals; it may be nil.
	Metrics *metrics.Metrics
}

// wait is how long a request may wait for the gate's lanes, together; 0
// when it has none, and then nothing waits.
func (g Gate) wait() time.Duration {
	var d time.Duration
	for _, l := range []*budget.Lane{g.Bodies, g.Handling} {
		if l != nil {
			d = max(d, l.Wait())
		}
	}
	return d
}

// errTooLarge is readAdmitted's error for a body over MaxReviewSize;
// errEmpty for a body of no bytes.
var (
	errTooLarge = fmt.Errorf("the request body is larger than %d bytes", MaxReviewSize)
	errEmpty    = errors.New("the request body is empty")
)

// answerGrace is how long past Gate.Deadline an answer may take to be
// written: long enough to tell a client its body came too late.
const answerGrace = time.Second

// bodyGrowth is how many times larger each new buffer for a body is than
// the last: few copies (a third of the body at most), and a trickling
// sender holds at most this many times what it sent.
const bodyGrowth = 4

// readAdmitted reads r to its end as Gate describes: the first
// budget.FreeBodyBytes freely, then in buffers admitted by lane (when not
// nil) before they are allocated, growing by bodyGrowth and never past the
// announced length n (a Content-Length; negative if unknown) while the
// sender keeps to it.
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
			if n >= int64(len(buf)) && next >= n {
				// The announced end is within this growth: one byte
				// past it, so the read that finds the end needs no more.
				next = n + 1
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
		case err == io.EOF && len(buf) == 0:
			return nil, release, errEmpty
		case err == io.EOF:
			return buf, release, nil
		case err != nil:
			return buf, release, fmt.Errorf("reading the request body: %w", err)
		}
	}
}

// answerBusy refuses a request with busy, a *budget.BusyError, as the
// handler does when the decryption budget has no room: when head, the
// start of the body or all of it, shows the review's uid and names, as a
// review with a 503 result, which the API server passes on as the
// webhook's answer; otherwise with 503 and a Kubernetes Status, which the
// API server reports as a failed call.
func answerBusy(w http.ResponseWriter, busy error, head []byte, m *metrics.Metrics, start time.Time) {
	m.Busy(busy)
	h, ok := peekReview(head)
	if !ok {
		writeStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
			"sops-webhook: "+busy.Error()+"; the request is not at fault: retry it")
		return
	}
	resp := (&refusal{err: busy}).response(object{kind: h.kind.Kind, namespace: h.namespace, name: h.name})
	resp.UID = h.uid
	observeRequest(m, h.request(), resp, time.Since(start))
	writeReview(w, h.apiVersion, resp)
}

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
