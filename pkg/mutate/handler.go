package mutate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/internal/deferlog"
	"github.com/sops-webhook/sops-webhook/pkg/internal/lazyctx"
	"github.com/sops-webhook/sops-webhook/pkg/metrics"
)

// MaxDocumentsPerObject caps the SOPS documents one object may carry, which
// bounds the key unwraps a single request can cause.
const MaxDocumentsPerObject = 256

// DefaultDecryptTimeout bounds the decryption of one request. It stays well
// inside the API server's webhook timeout so a slow key source yields a
// clear, retryable refusal rather than the API server's own timeout.
const DefaultDecryptTimeout = 5 * time.Second

// skip is why a request is allowed untouched.
type skip uint8

const (
	skipKind skip = iota + 1
	skipOperation
	skipNoSOPS
	skipHelmRelease
)

// response allows the request with s's message.
func (s skip) response() admission.Response {
	return admission.Allowed([...]string{
		skipKind:        "not a Secret or ConfigMap",
		skipOperation:   "operation not handled",
		skipNoSOPS:      "no SOPS content",
		skipHelmRelease: "Helm release records are never modified",
	}[s])
}

// skipRequest is why req is skipped whatever its object holds, or 0: the
// handler takes creates and updates of core Secrets and ConfigMaps.
func skipRequest(req admission.Request) skip {
	switch {
	case req.Kind.Group != "" || (req.Kind.Kind != "Secret" && req.Kind.Kind != "ConfigMap"):
		return skipKind
	case req.Operation != admissionv1.Create && req.Operation != admissionv1.Update:
		return skipOperation
	}
	return 0
}

// Decryptor is what the handler needs of package decrypt.
type Decryptor interface {
	Document(ctx context.Context, value []byte, f decrypt.Format, access keysource.Access) (decrypt.Result, error)
	Tokens(idx *decrypt.Index, access keysource.Access) *decrypt.Tokens
	Index(annotation []byte) (*decrypt.Index, error)
}

// Policy decides which configured keys a request may use.
type Policy interface {
	// Access returns the keys a user may use for an object of kind in
	// namespace; nil allows every key.
	Access(namespace, kind string, user authenticationv1.UserInfo) keysource.Access
}

// Engine is what a request is handled with. The webhook swaps it atomically
// when its config is reloaded; one request uses one Engine throughout.
type Engine struct {
	Decryptor Decryptor
	// Policy may be nil: every key is usable in every namespace.
	Policy Policy
	// Rewrap says, for the key that opened a file's data key, which age
	// recipients and configured keys a rewrap adds and, with dropRetired,
	// which recipients it removes; nil: the webhook has no generated keys
	// and refuses rewraps.
	Rewrap func(opened string, dropRetired bool) (decrypt.RewrapPlan, error)
}

// Handler is the admission handler for Secrets and ConfigMaps.
type Handler struct {
	engine  func() Engine
	metrics *metrics.Metrics
	timeout time.Duration
	budget  *budget.Budget
	// log is the Server's; each request logs with its ids added.
	log logr.Logger
}

// Option configures a Handler.
type Option func(*Handler)

// WithTimeout sets how long one request may spend decrypting.
func WithTimeout(d time.Duration) Option { return func(h *Handler) { h.timeout = d } }

// WithBudget admits the SOPS payloads of each request through b, weighed by
// their size, before any is decrypted. Without it nothing bounds the work
// in flight.
func WithBudget(b *budget.Budget) Option { return func(h *Handler) { h.budget = b } }

// WithLogger makes the Server log through log. Without it, it logs nothing.
func WithLogger(log logr.Logger) Option { return func(h *Handler) { h.log = log } }

// WithMetrics records requests and decryptions in m.
func WithMetrics(m *metrics.Metrics) Option { return func(h *Handler) { h.metrics = m } }

// NewHandler returns a Handler that handles each request with the Engine
// engine returns at its start.
func NewHandler(engine func() Engine, opts ...Option) *Handler {
	h := &Handler{engine: engine, timeout: DefaultDecryptTimeout, log: logr.Discard()}
	for _, o := range opts {
		o(h)
	}
	return h
}

var _ admission.Handler = (*Handler)(nil)

// Handle decrypts the SOPS payloads of a Secret or ConfigMap being created or
// updated, as a controller-runtime admission.Handler. Objects without SOPS
// content are allowed without a patch; a payload that cannot be decrypted
// refuses the request (refusal.response). The webhook's Server takes the
// same flow through serveReview, which decodes the object with the review.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	var (
		obj *object
		err error
	)
	raw := req.Object.Raw
	if screenBytes(raw, mayHoldBase64(req.Kind.Kind, raw)).decode() {
		if obj, err = decodeObject(req.Kind.Kind, raw); err == nil {
			obj.old = decodeProvenance(req.OldObject.Raw)
		}
	}
	return h.handle(ctx, req, obj, err)
}

// serveReview answers the review in body, which the Server read and
// screened: it decodes the review once, with its object only when the
// screen found something to decode, and handles its request.
func (h *Handler) serveReview(w http.ResponseWriter, r *http.Request, body []byte, sc screen) {
	rv, err := decodeReview(body, sc.decode())
	var notReview *notReviewError
	if errors.As(err, &notReview) {
		writeReview(w, reviewV1, admission.Errored(http.StatusBadRequest, fmt.Errorf("sops-webhook: %w", err)))
		return
	}
	req := rv.req
	ctx := logf.IntoContext(r.Context(), deferlog.WithValues(h.log,
		"requestID", req.UID, "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name,
		"operation", req.Operation, "user", req.UserInfo.Username))
	resp := h.handle(ctx, req, rv.obj, err)
	if err := resp.Complete(req); err != nil {
		logf.FromContext(ctx).Error(err, "encoding the patch")
		resp = admission.Errored(http.StatusInternalServerError, errors.New("sops-webhook: internal error encoding the patch"))
		resp.UID = req.UID
	}
	writeReview(w, rv.apiVersion, resp)
}

// handle is the one flow of a request: skip early, take the decoded
// object, mutate it, answer. obj and decodeErr are what decoding the
// request's object gave: obj nil and no error when the screen found
// nothing to decode; an error makes the request a bad one, unless it is
// skipped anyway.
func (h *Handler) handle(ctx context.Context, req admission.Request, obj *object, decodeErr error) (resp admission.Response) {
	start := time.Now()
	defer func() { observeRequest(h.metrics, req, resp, time.Since(start)) }()
	defer func() {
		// controller-runtime's own recovery would put the panic value in the
		// response and the log; a panic value may quote data, so it is
		// dropped here and the request fails closed.
		if r := recover(); r != nil {
			logf.FromContext(ctx).Info("recovered from a panic; request refused")
			resp = admission.Errored(http.StatusInternalServerError, errors.New("sops-webhook: internal error"))
		}
	}()

	// Skip early: wrong kind or operation, or nothing to decode.
	if s := skipRequest(req); s != 0 {
		return s.response()
	}
	switch {
	case decodeErr != nil:
		return admission.Errored(http.StatusBadRequest, decodeErr)
	case obj == nil:
		return skipNoSOPS.response()
	case obj.helmRelease:
		return skipHelmRelease.response()
	}
	if obj.namespace == "" {
		obj.namespace = req.Namespace
	}

	// Mutate.
	// One unwrap budget for all the object's payloads.
	ctx, cancel := lazyctx.WithTimeout(keysource.WithRequestBudget(ctx), h.timeout)
	defer cancel()
	eng := h.engine()
	var access keysource.Access
	if eng.Policy != nil {
		access = eng.Policy.Access(obj.namespace, obj.kind, req.UserInfo)
	}
	if _, asked := obj.annotations[AnnotationRewrap]; asked {
		return h.rewrap(ctx, eng, access, *obj)
	}
	m, refused := h.mutate(ctx, eng.Decryptor, access, *obj)
	log := logf.FromContext(ctx)
	if refused != nil {
		log.Info("refused", "field", refused.field, "retryable", refused.retryable(), "reason", refused.err.Error())
		return refused.response(*obj)
	}
	ops := m.finish(*obj)
	if len(ops) == 0 {
		return skipNoSOPS.response()
	}
	if m.corrected {
		log.Info("provenance annotations the request wrote were corrected", "annotations", []string{AnnotationDecrypted, AnnotationKeys})
		return admission.Patched("nothing decrypted; the provenance annotations, which only the webhook writes, were put back to its record", ops...)
	}
	if len(m.ops) == 0 {
		return admission.Patched("removed the unused values index", ops...)
	}
	log.V(1).Info("decrypted", "fields", m.decrypted, "keys", m.keys)

	resp = admission.Patched("decrypted "+strings.Join(m.decrypted, ","), ops...)
	resp.AuditAnnotations = map[string]string{
		auditDecrypted: strings.Join(m.decrypted, ","),
		auditKeys:      strings.Join(m.keys, ","),
	}
	if obj.kind == "ConfigMap" {
		resp.Warnings = append(resp.Warnings, fmt.Sprintf(
			"sops-webhook: decrypted plaintext was stored in %s (%s); ConfigMaps are not meant for secrets, consider a Secret",
			obj, strings.Join(m.decrypted, ",")))
	}
	return resp
}

// observeRequest records req, answered with resp after d, in m.
func observeRequest(m *metrics.Metrics, req admission.Request, resp admission.Response, d time.Duration) {
	m.Request(req.Kind.Kind, string(req.Operation), requestOutcome(resp), d)
}

// requestOutcome names a response as a metrics outcome: a 400 result is
// counted with the webhook's errors, as controller-runtime counts it.
func requestOutcome(resp admission.Response) string {
	switch {
	case resp.Result != nil && resp.Result.Code >= 500, resp.Result != nil && resp.Result.Code == 400:
		return metrics.OutcomeErrored
	case !resp.Allowed:
		return metrics.OutcomeDenied
	case len(resp.Patches) > 0:
		return metrics.OutcomePatched
	}
	return metrics.OutcomeSkipped
}
