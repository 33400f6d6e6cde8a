package mutate

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/internal/quote"
)

// hintExpand is the hint for a document that cannot be expanded.
const hintExpand = "remove the " + AnnotationExpand + " annotation to store the document whole"

// expandRequested reads the sops-webhook.io/expand annotation: "true" asks for
// expansion, "false" or no annotation does not, anything else is an error.
func expandRequested(annotations map[string]string) (bool, error) {
	switch v, ok := annotations[AnnotationExpand]; {
	case !ok || v == "false":
		return false, nil
	case v == "true":
		return true, nil
	}
	return false, errors.New(`the value must be "true" or "false"`)
}

// expansion is the state of an object's expansions: its data keys (data
// and binaryData share one namespace in a ConfigMap) and which entries each
// document field expanded into, before and in this request.
type expansion struct {
	existing map[string]bool
	taken    map[string]bool
	// prior is the sops-webhook.io/expanded annotation as received; done
	// is what this request expanded: field path -> entry keys.
	prior, done map[string][]string
}

func newExpansion(obj object) *expansion {
	x := &expansion{existing: map[string]bool{}, taken: map[string]bool{}, prior: map[string][]string{}, done: map[string][]string{}}
	for _, f := range obj.fields {
		x.existing[f.key], x.taken[f.key] = true, true
	}
	if raw, ok := obj.annotations[AnnotationExpanded]; ok {
		// Unreadable means no record: earlier entries then count as
		// collisions, which fails closed.
		_ = json.Unmarshal([]byte(raw), &x.prior)
	}
	return x
}

// annotation is the sops-webhook.io/expanded value after this request.
func (x *expansion) annotation() string {
	all := make(map[string][]string, len(x.prior)+len(x.done))
	maps.Copy(all, x.prior)
	maps.Copy(all, x.done)
	b, _ := json.Marshal(all) // a map of string slices always marshals
	return string(b)
}

// expand replaces the document field f by one field per entry of its flat
// plaintext. Entries that the same field expanded into before (on an
// UPDATE) are overwritten, and those its new plaintext no longer has are
// removed. An entry whose key is not a valid data key, or is taken by
// anything else, denies the request.
func (m *mutation) expand(f field, res decrypt.Result, x *expansion) *refusal {
	entries, err := res.Entries()
	if err != nil {
		return &refusal{field: f.path(), err: err, hint: hintExpand}
	}
	m.ops = append(m.ops, f.removeOp())
	m.removed = append(m.removed, f.path())
	delete(x.taken, f.key)
	own := x.prior[f.path()]
	for _, k := range own {
		delete(x.taken, k)
	}
	keys := make([]string, 0, len(entries))
	for _, e := range entries {
		if len(validation.IsConfigMapKey(e.Key)) > 0 {
			return &refusal{field: f.path(), err: fmt.Errorf("entry %s is not a valid key (letters, digits, '-', '_' and '.', at most %d characters)", quote.Capped(e.Key, maxKeyInMessage), validation.DNS1123SubdomainMaxLength), hint: hintExpand}
		}
		if x.taken[e.Key] {
			return &refusal{field: f.path(), err: fmt.Errorf("entry %s collides with a key the object already has", quote.Capped(e.Key, maxKeyInMessage)), hint: hintExpand}
		}
		x.taken[e.Key] = true
		entry := f.sibling(e.Key)
		if d := entry.checkText(e.Value); d != nil {
			return d
		}
		// JSON patch "add" replaces a member that exists.
		m.ops = append(m.ops, entry.addOp(e.Value))
		m.decrypted = append(m.decrypted, entry.path())
		keys = append(keys, e.Key)
	}
	for _, k := range own {
		if x.existing[k] && !x.taken[k] {
			stale := f.sibling(k)
			m.ops = append(m.ops, stale.removeOp())
			m.removed = append(m.removed, stale.path())
		}
	}
	slices.Sort(keys)
	x.done[f.path()] = keys
	return nil
}

// maxKeyInMessage caps an entry key quoted in a message. Keys of a SOPS
// document are stored in the clear, but they come from the request.
const maxKeyInMessage = 100
