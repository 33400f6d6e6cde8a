package mutate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// MaxDocumentsPerObject caps the SOPS documents one object may carry, which
// bounds the key unwraps a single request can cause.
const MaxDocumentsPerObject = 256

// DefaultDecryptTimeout bounds the decryption of one request. It stays well
// inside the API server's webhook timeout so a slow key source yields a
// clear denial rather than the API server's own timeout.
const DefaultDecryptTimeout = 5 * time.Second

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
}

// Static returns an Engine source that always returns e.
func Static(e Engine) func() Engine { return func() Engine { return e } }

// Handler is the admission handler for Secrets and ConfigMaps.
type Handler struct {
	engine  func() Engine
	metrics *Metrics
	timeout time.Duration
}

// Option configures a Handler.
type Option func(*Handler)

// WithTimeout sets how long one request may spend decrypting.
func WithTimeout(d time.Duration) Option { return func(h *Handler) { h.timeout = d } }

// WithMetrics records requests and decryptions in m.
func WithMetrics(m *Metrics) Option { return func(h *Handler) { h.metrics = m } }

// NewHandler returns a Handler that handles each request with the Engine
// engine returns at its start.
func NewHandler(engine func() Engine, opts ...Option) *Handler {
	h := &Handler{engine: engine, timeout: DefaultDecryptTimeout}
	for _, o := range opts {
		o(h)
	}
	return h
}

var _ admission.Handler = (*Handler)(nil)

// object is the part of a Secret or ConfigMap the mutation works on.
type object struct {
	kind        string
	namespace   string
	name        string
	annotations map[string]string
	fields      []field
}

func (o object) String() string {
	name := o.name
	if name == "" {
		name = "(generated name)"
	}
	return fmt.Sprintf("%s %s/%s", o.kind, o.namespace, name)
}

// Handle decrypts the SOPS payloads of a Secret or ConfigMap being created or
// updated. Objects without SOPS content are allowed without a patch; a
// payload that cannot be decrypted denies the request.
func (h *Handler) Handle(ctx context.Context, req admission.Request) (resp admission.Response) {
	start := time.Now()
	defer func() { h.metrics.observeRequest(req, resp, time.Since(start)) }()
	defer func() {
		// controller-runtime's own recovery would put the panic value in the
		// response and the log; a panic value may quote data, so it is
		// dropped here and the request fails closed.
		if r := recover(); r != nil {
			logf.FromContext(ctx).Info("recovered from a panic; request refused")
			resp = admission.Errored(http.StatusInternalServerError, errors.New("sops-webhook: internal error"))
		}
	}()

	// Skip early: wrong kind or operation, or no SOPS marker in the raw bytes.
	if req.Kind.Group != "" || (req.Kind.Kind != "Secret" && req.Kind.Kind != "ConfigMap") {
		return admission.Allowed("not a Secret or ConfigMap")
	}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("operation not handled")
	}
	// The plain marker is in ConfigMap data and in a values index; the
	// base64 forms are in Secret data and ConfigMap binaryData.
	raw := req.Object.Raw
	if !decrypt.HasMarker(raw) && !(mayHoldBase64(req.Kind.Kind, raw) && decrypt.MayHoldBase64Marker(raw)) {
		return admission.Allowed("no SOPS content")
	}

	// Decode.
	obj, skip, err := decodeObject(req.Kind.Kind, raw)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if skip != "" {
		return admission.Allowed(skip)
	}
	if obj.namespace == "" {
		obj.namespace = req.Namespace
	}

	// Mutate.
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	eng := h.engine()
	var access keysource.Access
	if eng.Policy != nil {
		access = eng.Policy.Access(obj.namespace, obj.kind, req.UserInfo)
	}
	m, denial := h.mutate(ctx, eng.Decryptor, access, obj)
	log := logf.FromContext(ctx)
	if denial != nil {
		log.Info("denied", "field", denial.field, "reason", denial.err.Error())
		return admission.Denied(denial.message(obj))
	}
	ops := m.finish(obj)
	if len(ops) == 0 {
		return admission.Allowed("no SOPS content")
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

// binaryDataKey is how a ConfigMap's base64 section appears in its JSON.
var binaryDataKey = []byte(`"binaryData"`)

// mayHoldBase64 reports whether an object can carry base64 values: every
// Secret, and a ConfigMap only with binaryData. It spares a ConfigMap of
// text the base64 marker scans.
func mayHoldBase64(kind string, raw []byte) bool {
	return kind == "Secret" || bytes.Contains(raw, binaryDataKey)
}

// The parts of a Secret or ConfigMap the handler reads. Decoding into these
// rather than the full API types skips managedFields, owner references and
// the rest, which on an UPDATE can be larger than the data.
type (
	objectMeta struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations"`
	}
	secretJSON struct {
		Metadata objectMeta        `json:"metadata"`
		Type     string            `json:"type"`
		Data     map[string][]byte `json:"data"`
	}
	configMapJSON struct {
		Metadata   objectMeta        `json:"metadata"`
		Data       map[string]string `json:"data"`
		BinaryData map[string][]byte `json:"binaryData"`
	}
)

// decodeObject decodes a Secret or ConfigMap. skip is non-empty when the
// object is one the webhook never touches.
func decodeObject(kind string, raw []byte) (obj object, skip string, err error) {
	switch kind {
	case "Secret":
		var s secretJSON
		if err := json.Unmarshal(raw, &s); err != nil {
			return object{}, "", fmt.Errorf("decode Secret: %w", err)
		}
		if s.Type == HelmReleaseSecretType {
			return object{}, "Helm release records are never modified", nil
		}
		m := s.Metadata
		return object{kind: kind, namespace: m.Namespace, name: m.Name, annotations: m.Annotations, fields: secretFields(s.Data)}, "", nil
	default:
		var c configMapJSON
		if err := json.Unmarshal(raw, &c); err != nil {
			return object{}, "", fmt.Errorf("decode ConfigMap: %w", err)
		}
		m := c.Metadata
		return object{kind: kind, namespace: m.Namespace, name: m.Name, annotations: m.Annotations, fields: configMapFields(c.Data, c.BinaryData)}, "", nil
	}
}

// mutation is what decrypting an object produced.
type mutation struct {
	ops []jsonpatch.JsonPatchOperation
	// decrypted are the paths of the fields that now hold plaintext.
	decrypted []string
	// removed are the paths of fields an expansion replaced or dropped.
	removed []string
	keys    []string
	// expanded is the new sops-webhook.io/expanded value, if any.
	expanded string
}

// finish adds the annotation operations to the field operations: the audit
// annotations when something was decrypted, and the removal of the values
// index, which is transport and never stored.
func (m *mutation) finish(obj object) []jsonpatch.JsonPatchOperation {
	ops := m.ops
	if len(m.ops) > 0 {
		present := make(map[string]bool, len(obj.fields)+len(m.decrypted))
		for _, f := range obj.fields {
			present[f.path()] = true
		}
		for _, p := range m.removed {
			delete(present, p)
		}
		for _, p := range m.decrypted {
			present[p] = true
		}
		set := map[string]string{
			AnnotationDecrypted: mergeList(obj.annotations[AnnotationDecrypted], m.decrypted, func(p string) bool { return present[p] }),
			AnnotationKeys:      mergeList(obj.annotations[AnnotationKeys], m.keys, func(string) bool { return true }),
		}
		if m.expanded != "" {
			set[AnnotationExpanded] = m.expanded
		}
		ops = append(ops, annotationOps(obj.annotations, set)...)
	}
	if _, ok := obj.annotations[AnnotationValues]; ok {
		ops = append(ops, jsonpatch.NewOperation("remove", annotationPointer(AnnotationValues), nil))
	}
	return ops
}

// denial is why a request is refused: the field and a value-free error.
type denial struct {
	field string
	err   error
	hint  string
}

func (d *denial) message(obj object) string {
	msg := fmt.Sprintf("sops-webhook: cannot decrypt %s field %s: %v", obj, d.field, d.err)
	if d.hint != "" {
		msg += "; " + d.hint
	}
	return msg
}

// valuesField names the values index in messages.
var valuesField = "metadata.annotations[" + AnnotationValues + "]"

func (h *Handler) mutate(ctx context.Context, d Decryptor, access keysource.Access, obj object) (mutation, *denial) {
	expand, err := expandRequested(obj.annotations)
	if err != nil {
		return mutation{}, &denial{field: "metadata.annotations[" + AnnotationExpand + "]", err: err}
	}
	var (
		m      mutation
		keys   = map[string]bool{}
		count  int
		tokens *decrypt.Tokens
		x      = newExpansion(obj)
	)
	for _, f := range obj.fields {
		format := decrypt.Detect(f.value, f.key)
		switch {
		case format == decrypt.FormatNone:
			continue
		case format == decrypt.FormatTokens:
			if tokens == nil {
				idx, bad := h.index(d, obj)
				if bad != nil {
					return mutation{}, bad
				}
				tokens = d.Tokens(idx, access)
			}
			plain, err := tokens.Decrypt(ctx, f.value)
			h.metrics.observeDecryption(format, reasonOf(err))
			if err != nil {
				return mutation{}, &denial{field: f.path(), err: err}
			}
			if d := f.checkText(plain); d != nil {
				return mutation{}, d
			}
			m.ops = append(m.ops, f.replaceOp(plain))
			m.decrypted = append(m.decrypted, f.path())
			continue
		}
		if count++; count > MaxDocumentsPerObject {
			return mutation{}, &denial{field: f.path(), err: fmt.Errorf("more than %d SOPS documents in one object", MaxDocumentsPerObject)}
		}
		res, err := d.Document(ctx, f.value, format, access)
		h.metrics.observeDecryption(format, reasonOf(err))
		if err != nil {
			return mutation{}, &denial{field: f.path(), err: err}
		}
		for _, k := range res.Keys {
			keys[k] = true
		}
		if expand {
			if d := m.expand(f, res, x); d != nil {
				return mutation{}, d
			}
			continue
		}
		if d := f.checkText(res.Plaintext); d != nil {
			return mutation{}, d
		}
		m.ops = append(m.ops, f.replaceOp(res.Plaintext))
		m.decrypted = append(m.decrypted, f.path())
	}
	if tokens != nil {
		for _, k := range tokens.Keys() {
			keys[k] = true
		}
	}
	sort.Strings(m.decrypted)
	m.keys = sortedKeys(keys)
	if len(x.done) > 0 {
		m.expanded = x.annotation()
	}
	return m, nil
}

// index parses the object's values index. A missing index is not an error
// here: the first token then fails with decrypt.ReasonNoIndex and its hint.
func (h *Handler) index(d Decryptor, obj object) (*decrypt.Index, *denial) {
	raw, ok := obj.annotations[AnnotationValues]
	if !ok {
		return nil, nil
	}
	idx, err := d.Index([]byte(raw))
	if err != nil {
		h.metrics.observeDecryption(decrypt.FormatTokens, reasonOf(err))
		return nil, &denial{field: valuesField, err: err}
	}
	return idx, nil
}

// reasonOf maps a decryption error to its reason for metrics; "" is success.
func reasonOf(err error) decrypt.Reason {
	if err == nil {
		return ""
	}
	var e *decrypt.Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return decrypt.ReasonInternal
}
