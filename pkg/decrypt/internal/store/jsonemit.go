package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/getsops/sops/v3"
)

// jsonIndent is sops' rule: a tab by default (-1), else that many spaces.
func jsonIndent(n int) (string, error) {
	switch {
	case n < -1:
		return "", errors.New("a JSON indentation below -1 is not accepted")
	case n == -1:
		return "\t", nil
	}
	return strings.Repeat(" ", n), nil
}

// emitJSON writes the first branch of in as sops' JSON store's
// EmitPlainFile does, in linear time where sops concatenates strings: compact
// JSON with comments left out, keys in tree order, scalars as encoding/json
// marshals them, then indented by encoding/json with indent, and a final
// newline. sizeHint, when not 0, is room to reserve for the compact form, so
// it is written without regrowing. Errors name no value.
func emitJSON(in sops.TreeBranches, indent string, sizeHint int) ([]byte, error) {
	if len(in) == 0 {
		return nil, errors.New("no tree branch to emit")
	}
	var compact bytes.Buffer
	compact.Grow(sizeHint)
	w := jsonWriter{b: &compact, enc: json.NewEncoder(&compact)}
	if err := w.tree(in[0]); err != nil {
		return nil, err
	}
	// json.Indent sizes out itself (twice the input).
	var out bytes.Buffer
	if err := json.Indent(&out, compact.Bytes(), "", indent); err != nil {
		return nil, fmt.Errorf("indent the JSON output: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// jsonWriter writes compact JSON into b. Scalars go through enc, which
// writes what json.Marshal returns (HTML characters escaped, as sops has
// them) followed by a newline that json.Indent drops, without a copy per
// value.
type jsonWriter struct {
	b   *bytes.Buffer
	enc *json.Encoder
}

// tree writes a mapping: string keys in order, comments skipped.
func (w jsonWriter) tree(tree sops.TreeBranch) error {
	b := w.b
	b.WriteByte('{')
	first := true
	for _, item := range tree {
		if _, ok := item.Key.(sops.Comment); ok {
			continue
		}
		key, ok := item.Key.(string)
		if !ok {
			return fmt.Errorf("a mapping key of type %T cannot be written as JSON", item.Key)
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		if err := w.scalar(key); err != nil {
			return err
		}
		b.WriteByte(':')
		if err := w.value(item.Value); err != nil {
			return err
		}
	}
	b.WriteByte('}')
	return nil
}

// value writes a mapping, a list with its comments skipped, or a scalar.
func (w jsonWriter) value(v any) error {
	b := w.b
	switch v := v.(type) {
	case sops.TreeBranch:
		return w.tree(v)
	case []any:
		b.WriteByte('[')
		first := true
		for _, item := range v {
			if _, ok := item.(sops.Comment); ok {
				continue
			}
			if !first {
				b.WriteByte(',')
			}
			first = false
			if err := w.value(item); err != nil {
				return err
			}
		}
		b.WriteByte(']')
		return nil
	}
	return w.scalar(v)
}

// scalar writes v as json.Marshal does, which is what sops calls.
func (w jsonWriter) scalar(v any) error {
	if err := w.enc.Encode(v); err != nil {
		return fmt.Errorf("a value of type %T cannot be written as JSON", v)
	}
	return nil
}
