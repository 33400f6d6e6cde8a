package mutate

import (
	"errors"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
)

// refusal is why a request is not admitted: the field and a value-free
// error.
type refusal struct {
	field string
	err   error
	// hint says what to do about it; empty takes the hint of the error's
	// decrypt.Reason (hints).
	hint string
	// rewrap is set when the request asked for a rewrap, not a decryption.
	rewrap bool
}

// reason is the decrypt.Reason behind the refusal; refusals the handler
// makes itself (an expansion collision, text that is not UTF-8, too many
// documents) are the request's and have none.
func (r *refusal) reason() (decrypt.Reason, bool) {
	var e *decrypt.Error
	if !errors.As(r.err, &e) {
		return "", false
	}
	return e.Reason, true
}

// retryable reports whether the webhook or a dependency failed rather than
// the request (decrypt.Reason.Retryable), or the budget had no room.
func (r *refusal) retryable() bool {
	var busy *budget.BusyError
	if errors.As(r.err, &busy) {
		return true
	}
	reason, ok := r.reason()
	return ok && reason.Retryable()
}

// response is the admission response for the refusal, following
// controller-runtime's classes: the request's fault is Denied (the API
// server answers 403 Forbidden); the webhook's or a key service's is an
// error response, 503 Service Unavailable (500 for an internal error),
// worded as retryable. It carries no Retry-After: the API server would turn
// that into a header on which client-go silently retries for about 40 s, so
// the caller would wait instead of hearing at once what failed.
func (r *refusal) response(obj object) admission.Response {
	cannot, couldNot := "cannot decrypt", "could not decrypt"
	if r.rewrap {
		cannot, couldNot = "cannot rewrap", "could not rewrap"
	}
	if !r.retryable() {
		return admission.Denied(r.message(obj, cannot))
	}
	code, status := int32(http.StatusServiceUnavailable), metav1.StatusReasonServiceUnavailable
	if reason, _ := r.reason(); reason == decrypt.ReasonInternal {
		code, status = http.StatusInternalServerError, metav1.StatusReasonInternalError
	}
	msg := r.message(obj, couldNot) + "; the request is not at fault: retry it"
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{
		Allowed: false,
		Result: &metav1.Status{
			Status: metav1.StatusFailure, Code: code, Reason: status, Message: msg,
		},
	}}
}

func (r *refusal) message(obj object, verb string) string {
	var msg string
	if r.field == "" {
		// The budget refuses the object as a whole.
		msg = fmt.Sprintf("sops-webhook: %s %s: %v", verb, obj, r.err)
	} else {
		msg = fmt.Sprintf("sops-webhook: %s %s field %s: %v", verb, obj, r.field, r.err)
	}
	hint := r.hint
	if reason, ok := r.reason(); ok && hint == "" {
		hint = hints[reason]
	}
	if hint != "" {
		msg += "; " + hint
	}
	return msg
}
