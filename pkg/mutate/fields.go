package mutate

import (
	"encoding/base64"
	"errors"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"gomodules.xyz/jsonpatch/v2"
)

// field is one value of a Secret or ConfigMap.
type field struct {
	// section is "data" or "binaryData".
	section string
	key     string
	value   []byte
	// binary is true where the API carries the value as base64: Secret data
	// and ConfigMap binaryData.
	binary bool
}

// path is how the field is named in annotations and messages: data.app.env.
func (f field) path() string { return f.section + "." + f.key }

// pointer is the field's JSON pointer (RFC 6901).
func (f field) pointer() string {
	return "/" + f.section + "/" + escapePointer(f.key)
}

// pointerEscaper escapes a key for a JSON pointer (RFC 6901 §4).
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapePointer(s string) string { return pointerEscaper.Replace(s) }

// replaceOp is the JSON patch operation that stores plain in f.
func (f field) replaceOp(plain []byte) jsonpatch.JsonPatchOperation {
	return jsonpatch.NewOperation("replace", f.pointer(), f.encode(plain))
}

// addOp is the JSON patch operation that adds f, a new field, holding plain.
func (f field) addOp(plain []byte) jsonpatch.JsonPatchOperation {
	return jsonpatch.NewOperation("add", f.pointer(), f.encode(plain))
}

// removeOp is the JSON patch operation that removes f.
func (f field) removeOp() jsonpatch.JsonPatchOperation {
	return jsonpatch.NewOperation("remove", f.pointer(), nil)
}

// encode is plain as the API carries it in f's section.
func (f field) encode(plain []byte) any {
	if f.binary {
		return base64.StdEncoding.EncodeToString(plain)
	}
	return string(plain)
}

// sibling is a new field named key in f's section.
func (f field) sibling(key string) field {
	return field{section: f.section, key: key, binary: f.binary}
}

// checkText refuses plain for a text section (ConfigMap data) unless it is
// UTF-8, which the API requires there.
func (f field) checkText(plain []byte) *refusal {
	if f.binary || utf8.Valid(plain) {
		return nil
	}
	return &refusal{field: f.path(), err: errors.New("the plaintext is not UTF-8 text"), hint: "store binary documents under binaryData"}
}

func secretFields(data map[string][]byte) []field {
	out := make([]field, 0, len(data))
	for _, k := range sortedKeys(data) {
		out = append(out, field{section: "data", key: k, value: data[k], binary: true})
	}
	return out
}

func configMapFields(data map[string]string, binaryData map[string][]byte) []field {
	out := make([]field, 0, len(data)+len(binaryData))
	for _, k := range sortedKeys(data) {
		out = append(out, field{section: "data", key: k, value: []byte(data[k])})
	}
	for _, k := range sortedKeys(binaryData) {
		out = append(out, field{section: "binaryData", key: k, value: binaryData[k], binary: true})
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// annotationOps sets the given annotations, creating the map if the object
// has none.
func annotationOps(existing map[string]string, set map[string]string) []jsonpatch.JsonPatchOperation {
	if existing == nil {
		return []jsonpatch.JsonPatchOperation{jsonpatch.NewOperation("add", "/metadata/annotations", set)}
	}
	ops := make([]jsonpatch.JsonPatchOperation, 0, len(set))
	for _, k := range sortedKeys(set) {
		op := "add"
		if _, ok := existing[k]; ok {
			op = "replace"
		}
		ops = append(ops, jsonpatch.NewOperation(op, annotationPointer(k), set[k]))
	}
	return ops
}

// annotationPointer is the JSON pointer of annotation k.
func annotationPointer(k string) string { return "/metadata/annotations/" + escapePointer(k) }

// mergeList merges the comma-separated list in prev with add, keeping only
// entries keep accepts, sorted and without duplicates.
func mergeList(prev string, add []string, keep func(string) bool) string {
	var all []string
	for _, e := range strings.Split(prev, ",") {
		if e = strings.TrimSpace(e); e != "" && keep(e) {
			all = append(all, e)
		}
	}
	all = append(all, add...)
	sort.Strings(all)
	return strings.Join(slices.Compact(all), ",")
}
