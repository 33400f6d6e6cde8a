package mutate

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
)

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

// binaryDataKey is how a ConfigMap's base64 section appears in its JSON.
var binaryDataKey = []byte(`"binaryData"`)

// mayHoldBase64 reports whether an object can carry base64 values: every
// Secret, and a ConfigMap only with binaryData. It spares a ConfigMap of
// text the base64 marker scans.
func mayHoldBase64(kind string, raw []byte) bool {
	return kind == "Secret" || bytes.Contains(raw, binaryDataKey)
}

// mayHoldSOPS is the screen before anything is decoded: it reports whether
// raw, an object or a whole review, holds a SOPS marker in plain text (as in
// ConfigMap data and a values index) or, when withBase64, in base64 (as in
// Secret data and ConfigMap binaryData). False means raw certainly holds no
// SOPS content.
func mayHoldSOPS(raw []byte, withBase64 bool) bool {
	return decrypt.HasMarker(raw) || withBase64 && decrypt.MayHoldBase64Marker(raw)
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
