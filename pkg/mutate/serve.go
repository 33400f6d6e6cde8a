package mutate

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/internal/lazyctx"
)

// The AdmissionReview versions the webhook answers: v1beta1 has v1's shape,
// and is answered in its own version, as controller-runtime does.
const (
	reviewV1      = "admission.k8s.io/v1"
	reviewV1beta1 = "admission.k8s.io/v1beta1"
)

// Server is the webhook's admission endpoint: it owns the Gate a request's
// body passes and the Handler that answers its review.
type Server struct {
	gate Gate
	// reviews answers a screened body: the Handler, or a test's probe.
	reviews reviewer
	// log is the Handler's.
	log logr.Logger
	// draining is set by Drain.
	draining atomic.Bool
}

// reviewer answers the review in body, which the server read and screened.
type reviewer interface {
	serveReview(w http.ResponseWriter, r *http.Request, body []byte, sc screen)
}

// NewServer returns a Server that reads bodies within g and answers them
// with h. A zero Gate reads with no lane and no deadline.
func NewServer(h *Handler, g Gate) *Server { return &Server{gate: g, reviews: h, log: h.log} }

// Drain makes the server ask each client to close its connection after its
// answer, so kept-alive connections move to other replicas while this one
// shuts down.
func (s *Server) Drain() { s.draining.Store(true) }

// ServeHTTP answers the AdmissionReview posted in r. Every request takes
// the same path:
//
//  1. its body is read within the Gate's budgets and deadline
//     (readAdmitted);
//  2. the body is screened once for SOPS markers and the provenance
//     record (screenBytes);
//  3. a large body with a marker waits for a handling slot, and its answer
//     is buffered so that a client slow to read it holds no slot;
//  4. the Handler decodes the review once and answers it (serveReview).
//
// A request not admitted in time is answered at once with a retryable
// refusal (answerBusy); a body that does not arrive in time with 408; a
// body larger than MaxReviewSize with a 413 result; a panic with a 500
// result. None quotes the body.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		// handle recovers on its own; this covers reading and answering.
		// net/http's recovery would log the panic value, which may quote
		// the body, and leave the API server with a broken connection.
		if p := recover(); p != nil {
			s.log.Info("recovered from a panic serving a review; request refused")
			writeReview(w, reviewV1, admission.Errored(http.StatusInternalServerError, errors.New("sops-webhook: internal error")))
		}
	}()
	start := time.Now()
	if s.draining.Load() {
		w.Header().Set("Connection", "close")
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		writeReview(w, reviewV1, admission.Errored(http.StatusBadRequest, fmt.Errorf("sops-webhook: content type %q, expected application/json", ct)))
		return
	}
	g := s.gate
	if g.Deadline > 0 {
		// Errors mean the connection cannot take deadlines (only in tests'
		// recorders); net/http resets the read deadline for the next
		// request, and every request sets its own.
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(start.Add(g.Deadline))
		_ = rc.SetWriteDeadline(start.Add(g.Deadline + answerGrace))
	}
	// One wait for both lanes: a request's wait for admission is the
	// lanes' wait, not twice that. Its timer starts only if a lane makes
	// the request wait.
	ctx, cancel := lazyctx.WithTimeout(r.Context(), g.wait())
	defer cancel()

	// 1. Read.
	body, releaseBody, err := readAdmitted(ctx, g.Bodies, r.Body, r.ContentLength)
	defer releaseBody()
	var busy *budget.BusyError
	switch {
	case errors.As(err, &busy):
		// The rest of the body is never read: the connection is closed
		// after the answer.
		w.Header().Set("Connection", "close")
		answerBusy(w, err, body, g.Metrics, start)
		return
	case errors.Is(err, errTooLarge):
		writeReview(w, reviewV1, admission.Errored(http.StatusRequestEntityTooLarge, fmt.Errorf("sops-webhook: %w", err)))
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		writeStatus(w, http.StatusRequestTimeout, metav1.StatusReasonTimeout,
			fmt.Sprintf("sops-webhook: the request body did not arrive within %s", g.Deadline))
		return
	case err != nil:
		writeReview(w, reviewV1, admission.Errored(http.StatusBadRequest, fmt.Errorf("sops-webhook: %w", err)))
		return
	}

	// 2. Screen.
	sc := screenBytes(body, true)

	// 3. A large body that may need decrypting is handled in a slot.
	if !sc.sops || len(body) <= budget.SmallWeight || g.Handling == nil {
		s.reviews.serveReview(w, r, body, sc)
		return
	}
	releaseHandling, err := g.Handling.Acquire(ctx, int64(len(body)))
	if err != nil {
		answerBusy(w, err, body, g.Metrics, start)
		return
	}
	answer := &bufferedResponse{header: http.Header{}}
	s.reviews.serveReview(answer, r, body, sc)
	releaseHandling()
	answer.writeTo(w)
}

// writeReview answers with resp in an AdmissionReview of apiVersion.
func writeReview(w http.ResponseWriter, apiVersion string, resp admission.Response) {
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: apiVersion, Kind: "AdmissionReview"},
		Response: &resp.AdmissionResponse,
	})
	if err != nil {
		writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, "sops-webhook: encoding the answer: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// writeStatus answers with a Kubernetes Status, which the API server's
// client reads as the error's message, and closes the connection.
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
