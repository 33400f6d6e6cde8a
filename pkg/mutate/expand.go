package mutate

import (
	"errors"
	"fmt"
	"strconv"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
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

// keyNames tracks the keys of an object's data sections, which share one
// namespace (a ConfigMap key may not be in both data and binaryData).
type keyNames map[string]bool

func newKeyNames(fields []field) keyNames {
	n := make(keyNames, len(fields))
	for _, f := range fields {
		n[f.key] = true
	}
	return n
}

// expand replaces the document field f by one field per entry of its flat
// plaintext. An entry whose key is not a valid data key, or is already
// taken, denies the request.
func (m *mutation) expand(f field, res decrypt.Result, names keyNames) *denial {
	entries, err := res.Entries()
	if err != nil {
		return &denial{field: f.path(), err: err, hint: hintExpand}
	}
	m.ops = append(m.ops, f.removeOp())
	m.removed = append(m.removed, f.path())
	delete(names, f.key)
	for _, e := range entries {
		if len(validation.IsConfigMapKey(e.Key)) > 0 {
			return &denial{field: f.path(), err: fmt.Errorf("entry %s is not a valid key (letters, digits, '-', '_' and '.', at most %d characters)", quoteKey(e.Key), validation.DNS1123SubdomainMaxLength), hint: hintExpand}
		}
		if names[e.Key] {
			return &denial{field: f.path(), err: fmt.Errorf("entry %s collides with a key the object already has", quoteKey(e.Key)), hint: hintExpand}
		}
		names[e.Key] = true
		entry := f.sibling(e.Key)
		if d := entry.checkText(e.Value); d != nil {
			return d
		}
		m.ops = append(m.ops, entry.addOp(e.Value))
		m.decrypted = append(m.decrypted, entry.path())
	}
	return nil
}

// quoteKey renders an entry key for a message. Keys of a SOPS document are
// stored in the clear, but they come from the request: quoted and capped.
func quoteKey(k string) string {
	const maxLen = 100
	if len(k) > maxLen {
		k = k[:maxLen] + "..."
	}
	return strconv.Quote(k)
}
