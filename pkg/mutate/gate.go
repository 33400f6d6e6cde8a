package mutate

import (
	"encoding/json"
	"net/http"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
)

// MaxReviewSize is the largest AdmissionReview body the webhook reads:
// controller-runtime's limit, room for an object and its old version at the
// API server's 3 MiB request limit each. A body of unknown length is
// weighed as this much.
const MaxReviewSize = 7 << 20

// BodyGate admits each request body heavier than budget.SmallWeight through
// lane before next reads it, weighed by its Content-Length, so the bodies a
// replica holds at once stay within the lane whatever the API server sends.
// A body not admitted in time is answered at once, unread, with 503 and a
// Kubernetes Status that says the webhook is busy and the request may be
// retried; the API server passes its message on. Light bodies, which are
// almost every request, pass straight through.
func BodyGate(lane *budget.Lane, m *Metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := r.ContentLength
		if n < 0 || n > MaxReviewSize {
			n = MaxReviewSize
		}
		if n <= budget.SmallWeight {
			next.ServeHTTP(w, r)
			return
		}
		release, err := lane.Acquire(r.Context(), n)
		if err != nil {
			m.observeBusy(err)
			writeStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
				"sops-webhook: "+err.Error()+"; the request is not at fault: retry it")
			return
		}
		defer release()
		next.ServeHTTP(w, r)
	})
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
