package mutate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	kjson "sigs.k8s.io/json"
)

// The AdmissionReview versions the webhook answers: v1beta1 has v1's shape,
// and is answered in its own version, as controller-runtime does.
const (
	reviewV1      = "admission.k8s.io/v1"
	reviewV1beta1 = "admission.k8s.io/v1beta1"
)

// ServeHTTP answers the AdmissionReview posted in r with Handle's flow. It
// reads the body once and decodes the review once, case-sensitively as the
// API server encodes it: with the Secret or ConfigMap when the body holds a
// SOPS marker, skipping the objects otherwise, and never keeping the old
// object of an update. controller-runtime's admission server would decode
// the review twice (once to find its kind) and the handler the object a
// third time; on a small Secret that decoding is most of a request's cost.
//
// A body that is not a review is answered with a 400 result, one larger
// than MaxReviewSize with a 413, a panic with a 500; none quotes the body.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		// handle recovers on its own; this covers reading and answering.
		// net/http's recovery would log the panic value, which may quote
		// the body, and leave the API server with a broken connection.
		if p := recover(); p != nil {
			h.log.Info("recovered from a panic serving a review; request refused")
			writeReview(w, reviewV1, admission.Errored(http.StatusInternalServerError, errors.New("sops-webhook: internal error")))
		}
	}()
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		writeReview(w, reviewV1, admission.Errored(http.StatusBadRequest, fmt.Errorf("sops-webhook: content type %q, expected application/json", ct)))
		return
	}
	body, marked, err := readBody(r)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, errTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		writeReview(w, reviewV1, admission.Errored(int32(code), fmt.Errorf("sops-webhook: %w", err)))
		return
	}
	rv, err := decodeReview(body, marked || mentionsProvenance(body))
	if err != nil {
		writeReview(w, reviewV1, admission.Errored(http.StatusBadRequest, fmt.Errorf("sops-webhook: %w", err)))
		return
	}
	req := rv.req
	ctx := logf.IntoContext(r.Context(), withDeferredValues(h.log,
		"requestID", req.UID, "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name,
		"operation", req.Operation, "user", req.UserInfo.Username))
	resp := h.handle(ctx, req, rv.object)
	if err := resp.Complete(req); err != nil {
		logf.FromContext(ctx).Error(err, "encoding the patch")
		resp = admission.Errored(http.StatusInternalServerError, errors.New("sops-webhook: internal error encoding the patch"))
		resp.UID = req.UID
	}
	writeReview(w, rv.apiVersion, resp)
}

// review is an AdmissionReview as decodeReview read it.
type review struct {
	apiVersion string
	req        admission.Request
	// obj is the decoded object, nil when it was not decoded; objErr is
	// why it did not decode.
	obj    *objectJSON
	objErr error
	// old is the provenance record of the object an update replaces.
	old provenance
}

// object is handle's decode step for the review's object: skipped when it
// was not decoded, a bad request when it did not decode.
func (rv review) object() (object, string, error) {
	switch {
	case rv.objErr != nil:
		return object{}, "", fmt.Errorf("decode %s: %s", rv.req.Kind.Kind, describeJSONError(rv.objErr))
	case rv.obj == nil:
		return object{}, skipNoSOPS, nil
	}
	obj, skip, err := rv.obj.object(rv.req.Kind.Kind)
	obj.old = rv.old
	return obj, skip, err
}

// reviewJSON is an AdmissionReview as the handler reads it: the request's
// object decoded as O, its old object skipped.
type reviewJSON[O any] struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		admissionv1.AdmissionRequest
		// These shadow AdmissionRequest's fields of the same names.
		Object    O             `json:"object"`
		OldObject oldObjectJSON `json:"oldObject"`
	} `json:"request"`
}

// decodeReview decodes body, an AdmissionReview, with its object when
// withObject. An object that fails to decode is kept as the review's
// objErr, so that it is refused as that request's bad object; err is for a
// body that is not a review at all. Neither quotes the body.
func decodeReview(body []byte, withObject bool) (review, error) {
	var objErr error
	if withObject {
		objErr = checkMembers(body)
	}
	if withObject && objErr == nil {
		var rv reviewJSON[objectJSON]
		if objErr = kjson.UnmarshalCaseSensitivePreserveInts(body, &rv); objErr == nil {
			apiVersion, req, err := rv.check()
			if err != nil {
				return review{}, err
			}
			return review{apiVersion: apiVersion, req: req, obj: &rv.Request.Object, old: rv.Request.OldObject.provenance}, nil
		}
	}
	var rv reviewJSON[skipValue]
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &rv); err != nil {
		return review{}, fmt.Errorf("the body is not an AdmissionReview: %s", describeJSONError(err))
	}
	apiVersion, req, err := rv.check()
	if err != nil {
		return review{}, err
	}
	return review{apiVersion: apiVersion, req: req, objErr: objErr, old: rv.Request.OldObject.provenance}, nil
}

// check returns the review's version and request, or why it is not a
// review the webhook answers. A review without apiVersion and kind is taken
// as v1, as controller-runtime takes it.
func (rv *reviewJSON[O]) check() (apiVersion string, req admission.Request, err error) {
	switch {
	case rv.Kind != "" && rv.Kind != "AdmissionReview":
		return "", req, fmt.Errorf("the body is a %q, not an AdmissionReview", rv.Kind)
	case rv.APIVersion != "" && rv.APIVersion != reviewV1 && rv.APIVersion != reviewV1beta1:
		return "", req, fmt.Errorf("AdmissionReview version %q is not served: send %s", rv.APIVersion, reviewV1)
	case rv.Request == nil:
		return "", req, errors.New("the AdmissionReview holds no request")
	}
	apiVersion = rv.APIVersion
	if apiVersion == "" {
		apiVersion = reviewV1
	}
	return apiVersion, admission.Request{AdmissionRequest: rv.Request.AdmissionRequest}, nil
}

// errTooLarge is readBody's error for a body over MaxReviewSize.
var errTooLarge = fmt.Errorf("the request body is larger than %d bytes", MaxReviewSize)

// readBody returns r's body, as BodyGate already read it or read now, and
// whether it may hold SOPS content (mayHoldSOPS with base64), from the
// gate's screen when it made one. Read here, outside a gate, it is read as
// the gate reads it, with no lane.
func readBody(r *http.Request) (body []byte, marked bool, err error) {
	if b, ok := r.Body.(*readBodyOnce); ok {
		if len(b.data) > MaxReviewSize {
			return nil, false, errTooLarge
		}
		return b.data, b.marked, nil
	}
	body, release, err := readAdmitted(r.Context(), nil, r.Body, r.ContentLength)
	release()
	if err != nil {
		return nil, false, err
	}
	if len(body) == 0 {
		return nil, false, errors.New("the request body is empty")
	}
	return body, mayHoldSOPS(body, true), nil
}

// readBodyOnce is a body BodyGate has read and screened, handed on without
// a copy.
type readBodyOnce struct {
	data   []byte
	marked bool
	read   int
}

func (b *readBodyOnce) Read(p []byte) (int, error) {
	if b.read == len(b.data) {
		return 0, io.EOF
	}
	n := copy(p, b.data[b.read:])
	b.read += n
	return n, nil
}

func (b *readBodyOnce) Close() error { return nil }

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
