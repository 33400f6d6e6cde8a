package mutate

import (
	"context"
	"fmt"
	"sort"

	"gomodules.xyz/jsonpatch/v2"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

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
	// corrected is set by finish when, nothing decrypted, it put the
	// provenance record the request wrote back to what the webhook did.
	corrected bool
}

// finish adds the annotation operations to the field operations: the
// provenance record, and the removal of the values index, which is
// transport and never stored.
//
// The record says only what this webhook did: the fields it decrypted now,
// and those of the replaced object's record (never the request's) that are
// still present, with their keys. When nothing was decrypted now, a record
// the request wrote that differs from that is put back to it, or removed;
// a request that drops the record may. Writes the webhook never sees are
// the ValidatingAdmissionPolicy sops-webhook-provenance's.
func (m *mutation) finish(obj object) []jsonpatch.JsonPatchOperation {
	ops := m.ops
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
	all := func(string) bool { return true }
	kept := mergeList(obj.old.decrypted, nil, func(p string) bool { return present[p] })
	want := provenance{decrypted: mergeList(kept, m.decrypted, all)}
	// The old record's keys stay only while a field it covers was not
	// decrypted again now: the record names keys per object, not per field.
	now := make(map[string]bool, len(m.decrypted))
	for _, p := range m.decrypted {
		now[p] = true
	}
	if mergeList(kept, nil, func(p string) bool { return !now[p] }) != "" {
		want.keys = obj.old.keys
	}
	if want.decrypted != "" {
		want.keys = mergeList(want.keys, m.keys, all)
	}
	if len(m.ops) > 0 {
		set := map[string]string{AnnotationDecrypted: want.decrypted, AnnotationKeys: want.keys}
		if m.expanded != "" {
			set[AnnotationExpanded] = m.expanded
		}
		ops = append(ops, annotationOps(obj.annotations, set)...)
	} else {
		for _, a := range []struct{ key, want string }{{AnnotationDecrypted, want.decrypted}, {AnnotationKeys, want.keys}} {
			switch got, ok := obj.annotations[a.key]; {
			case !ok || got == a.want:
			case a.want == "":
				ops = append(ops, jsonpatch.NewOperation("remove", annotationPointer(a.key), nil))
				m.corrected = true
			default:
				ops = append(ops, jsonpatch.NewOperation("replace", annotationPointer(a.key), a.want))
				m.corrected = true
			}
		}
	}
	if _, ok := obj.annotations[AnnotationValues]; ok {
		ops = append(ops, jsonpatch.NewOperation("remove", annotationPointer(AnnotationValues), nil))
	}
	return ops
}

// valuesField names the values index in messages.
var valuesField = "metadata.annotations[" + AnnotationValues + "]"

// payloadWeight is what a SOPS payload takes of the decryption budget, in
// bytes of payload at budget.DecryptFactor: its size, or more when its
// structure is dense enough to cost more than that (decrypt.Items).
func payloadWeight(value []byte) int64 {
	return max(int64(len(value)), int64(decrypt.Items(value))*decrypt.ItemCost/budget.DecryptFactor)
}

func (h *Handler) mutate(ctx context.Context, d Decryptor, access keysource.Access, obj object) (mutation, *refusal) {
	expand, err := expandRequested(obj.annotations)
	if err != nil {
		return mutation{}, &refusal{field: "metadata.annotations[" + AnnotationExpand + "]", err: err}
	}
	var (
		m       mutation
		keys    = map[string]bool{}
		count   int
		tokens  *decrypt.Tokens
		x       *expansion // made when expand is asked for
		formats = make([]decrypt.Format, len(obj.fields))
		weight  int64
	)
	for i, f := range obj.fields {
		if formats[i] = decrypt.Detect(f.value, f.key); formats[i] != decrypt.FormatNone {
			weight += payloadWeight(f.value)
		}
	}
	// Only SOPS payloads are weighed: an object without any costs nothing.
	if h.budget != nil && weight > 0 {
		release, err := h.budget.Acquire(ctx, weight)
		if err != nil {
			h.metrics.Busy(err)
			return mutation{}, &refusal{err: err}
		}
		defer release()
	}
	for i, f := range obj.fields {
		format := formats[i]
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
			h.metrics.Decryption(format, decrypt.ReasonOf(err))
			if err != nil {
				return mutation{}, &refusal{field: f.path(), err: err}
			}
			if d := f.checkText(plain); d != nil {
				return mutation{}, d
			}
			m.ops = append(m.ops, f.replaceOp(plain))
			m.decrypted = append(m.decrypted, f.path())
			continue
		}
		if count++; count > MaxDocumentsPerObject {
			return mutation{}, &refusal{field: f.path(), err: fmt.Errorf("more than %d SOPS documents in one object", MaxDocumentsPerObject)}
		}
		res, err := d.Document(ctx, f.value, format, access)
		h.metrics.Decryption(format, decrypt.ReasonOf(err))
		if err != nil {
			return mutation{}, &refusal{field: f.path(), err: err}
		}
		for _, k := range res.Keys {
			keys[k] = true
		}
		if expand {
			if x == nil {
				x = newExpansion(obj)
			}
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
	if x != nil && len(x.done) > 0 {
		m.expanded = x.annotation()
	}
	return m, nil
}

// index parses the object's values index. A missing index is not an error
// here: the first token then fails with decrypt.ReasonNoIndex and its hint.
func (h *Handler) index(d Decryptor, obj object) (*decrypt.Index, *refusal) {
	raw, ok := obj.annotations[AnnotationValues]
	if !ok {
		return nil, nil
	}
	idx, err := d.Index([]byte(raw))
	if err != nil {
		h.metrics.Decryption(decrypt.FormatTokens, decrypt.ReasonOf(err))
		return nil, &refusal{field: valuesField, err: err}
	}
	return idx, nil
}
