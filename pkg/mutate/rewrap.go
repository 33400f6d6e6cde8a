package mutate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// Rewrapper is a Decryptor that can rewrap (decrypt.Decryptor is one).
type Rewrapper interface {
	Rewrap(ctx context.Context, value []byte, f decrypt.Format, access keysource.Access, targets decrypt.RewrapTargets) (decrypt.Rewrapped, error)
}

// rewrapAnnotation names the rewrap request in messages.
var rewrapAnnotation = "metadata.annotations[" + AnnotationRewrap + "]"

// rewrap answers a Secret that asks for a rewrap: each SOPS file in its
// data comes back with its data key also wrapped for what eng.Rewrap names,
// opened under the same policy as a decryption. Nothing is decrypted into
// the object and the annotation stays, so the answer is recognisably a
// rewrap (and the no-ciphertext policy lets it through). A provenance
// record the request wrote is put back, as for any write.
func (h *Handler) rewrap(ctx context.Context, eng Engine, access keysource.Access, obj object) admission.Response {
	refuse := func(r *refusal) admission.Response {
		r.rewrap = true
		logf.FromContext(ctx).Info("refused", "field", r.field, "retryable", r.retryable(), "reason", r.err.Error())
		return r.response(obj)
	}
	dropRetired := false
	switch v := obj.annotations[AnnotationRewrap]; {
	case v == RewrapDropRetired:
		dropRetired = true
	case v != "true":
		return refuse(&refusal{field: rewrapAnnotation, err: fmt.Errorf(`the value must be "true" or %q`, RewrapDropRetired)})
	}
	rw, ok := eng.Decryptor.(Rewrapper)
	switch {
	case obj.kind != "Secret":
		return refuse(&refusal{field: rewrapAnnotation, err: errors.New("a rewrap is asked with a Secret")})
	case eng.Rewrap == nil || !ok:
		return refuse(&refusal{field: rewrapAnnotation, err: errors.New("this webhook generates no keys, so it has no generation to rewrap for")})
	}
	targets := func(opened string) (decrypt.RewrapPlan, error) { return eng.Rewrap(opened, dropRetired) }

	var (
		m      mutation
		weight int64
		added  = map[string]bool{}
	)
	formats := make([]decrypt.Format, len(obj.fields))
	for i, f := range obj.fields {
		switch formats[i] = decrypt.Detect(f.value, f.key); {
		case formats[i] == decrypt.FormatTokens:
			return refuse(&refusal{field: f.path(), err: errors.New("a rewrap takes whole SOPS files; this value holds ENC[...] tokens")})
		case formats[i] != decrypt.FormatNone:
			weight += payloadWeight(f.value)
		}
	}
	if weight == 0 {
		return refuse(&refusal{field: rewrapAnnotation, err: errors.New("the Secret holds no SOPS file to rewrap")})
	}
	if h.budget != nil {
		release, err := h.budget.Acquire(ctx, weight)
		if err != nil {
			h.metrics.Busy(err)
			return refuse(&refusal{err: err})
		}
		defer release()
	}
	count := 0
	var rewrapped, keys []string
	for i, f := range obj.fields {
		if formats[i] == decrypt.FormatNone {
			continue
		}
		if count++; count > MaxDocumentsPerObject {
			return refuse(&refusal{field: f.path(), err: fmt.Errorf("more than %d SOPS documents in one object", MaxDocumentsPerObject)})
		}
		res, err := rw.Rewrap(ctx, f.value, formats[i], access, targets)
		h.metrics.Decryption(formats[i], decrypt.ReasonOf(err))
		if err != nil {
			return refuse(&refusal{field: f.path(), err: err})
		}
		m.ops = append(m.ops, f.replaceOp(res.File))
		rewrapped = append(rewrapped, f.path())
		keys = append(keys, res.Keys...)
		for _, r := range res.Added {
			added[r] = true
		}
	}
	// Nothing was decrypted: finish only puts back a record the request
	// wrote, and removes a values index.
	ops := append((&mutation{}).finish(obj), m.ops...)
	sort.Strings(rewrapped)
	recipients := make([]string, 0, len(added))
	for r := range added {
		recipients = append(recipients, r)
	}
	sort.Strings(recipients)
	logf.FromContext(ctx).Info("rewrapped", "fields", rewrapped, "keys", keys, "added", recipients, "dropRetired", dropRetired)
	resp := admission.Patched(fmt.Sprintf("rewrapped %s for %d more recipients", strings.Join(rewrapped, ","), len(recipients)), ops...)
	resp.AuditAnnotations = map[string]string{auditRewrapped: strings.Join(rewrapped, ","), auditKeys: strings.Join(keys, ",")}
	return resp
}
