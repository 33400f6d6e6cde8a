package store

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/config"
	sopsyaml "github.com/getsops/sops/v3/stores/yaml"
	"go.yaml.in/yaml/v3"
)

// yamlEmitter writes a decrypted tree as sops' YAML store's EmitPlainFile
// does. sops turns every key and scalar into a yaml.Node with
// yaml.Node.Encode, which sets up a whole YAML emitter and parser per
// call: about 120 bytes allocated for every byte of a flat document, and
// most of the time spent. emit encodes the scalars of a document in
// batches and builds the same node tree around them, so the encoder writes
// the same bytes.
type yamlEmitter struct {
	indent int
	// chunk is how many top-level entries of a document yaml encodes in
	// one call (yamlChunk; tests lower it to cut everywhere).
	chunk int
}

// yamlChunk is how many top-level entries of a one-document file are
// encoded in one call. yaml's encoder keeps every event of a call in one
// growing slice that it never trims, so encoding a large document at once
// costs far more than the document. A top-level entry is written the same
// whether it comes first in a call or after others: it starts on a new line
// at column 0, and the comments left inside the entry before it are written
// at that entry's depth either way (TestEmitYAMLChunks, FuzzEmitYAML).
const yamlChunk = 128

// newYAMLEmitter returns the YAML emitter with c's settings, as `sops
// decrypt` configures it.
func newYAMLEmitter(c *config.YAMLStoreConfig) (yamlEmitter, error) {
	indent := c.Indent
	switch {
	case indent < 0:
		return yamlEmitter{}, errors.New("a negative YAML indentation is not accepted")
	case indent == 0:
		indent = sopsyaml.IndentDefault
	}
	return yamlEmitter{indent: indent, chunk: yamlChunk}, nil
}

// emit returns exactly what sops' YAML store's EmitPlainFile returns for
// in: one YAML document per branch.
func (s yamlEmitter) emit(in sops.TreeBranches) ([]byte, error) {
	if len(in) == 0 {
		// No document: sops writes nothing (yaml cannot close a stream it
		// never started).
		return nil, nil
	}
	var b bytes.Buffer
	if len(in) == 1 {
		// The usual case, one document: encoded in chunks.
		for _, part := range s.chunks(mappingOf(in[0])) {
			if err := s.encode(&b, part); err != nil {
				return nil, err
			}
		}
		return b.Bytes(), nil
	}
	docs := make([]*yaml.Node, len(in))
	for i, branch := range in {
		docs[i] = mappingOf(branch)
	}
	if err := s.encode(&b, docs...); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// mappingOf builds the mapping node of a document.
func mappingOf(branch sops.TreeBranch) *yaml.Node {
	mapping := &yaml.Node{Kind: yaml.MappingNode}
	appendMapping(mapping, branch, encodeScalars(branch))
	return mapping
}

// encode writes each mapping as a YAML document with one encoder.
func (s yamlEmitter) encode(b *bytes.Buffer, mappings ...*yaml.Node) error {
	enc := yaml.NewEncoder(b)
	enc.SetIndent(s.indent)
	for _, m := range mappings {
		if err := enc.Encode(&yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{m}}); err != nil {
			return fmt.Errorf("write YAML: %w", err)
		}
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("write YAML: %w", err)
	}
	return nil
}

// chunks splits a document's mapping into mappings of about s.chunk
// entries each, which written one after the other as documents of their
// own make the same bytes as the whole. The mapping's own comments stay on
// the first part; a mapping that has more is not split.
func (s yamlEmitter) chunks(m *yaml.Node) []*yaml.Node {
	if m.LineComment != "" || m.FootComment != "" || len(m.Content) <= 2*s.chunk {
		return []*yaml.Node{m}
	}
	var parts []*yaml.Node
	start := 0
	for i := 2; i < len(m.Content); i += 2 {
		if i-start >= 2*s.chunk {
			parts = append(parts, &yaml.Node{Kind: yaml.MappingNode, Content: m.Content[start:i]})
			start = i
		}
	}
	parts = append(parts, &yaml.Node{Kind: yaml.MappingNode, Content: m.Content[start:]})
	parts[0].HeadComment = m.HeadComment
	return parts
}

// scalarNodes hands out, in tree order, the nodes of a branch's keys and
// scalar values.
type scalarNodes struct{ nodes []*yaml.Node }

func (s *scalarNodes) next() *yaml.Node {
	n := s.nodes[0]
	s.nodes = s.nodes[1:]
	return n
}

// scalarBatch is how many scalars encodeScalars encodes in one call. yaml
// keeps every event of a call in one growing slice, so one call for a whole
// document would cost more than the emitter and parser it saves.
const scalarBatch = 256

// encodeScalars returns the yaml.Node of every key and scalar value of
// branch in tree order, each what yaml.Node.Encode makes of it. They are
// encoded scalarBatch at a time as one sequence, which costs one emitter and
// one parser per batch instead of per scalar; should a batch fail, each of
// its scalars is encoded alone, as sops does (which keeps sops' handling of
// a value yaml cannot encode: an empty node).
//
// A word (see isWord) needs no encoding: its node is the one
// yaml.Node.Encode returns for it, built directly.
func encodeScalars(branch sops.TreeBranch) *scalarNodes {
	var values []any
	collectScalars(branch, &values)
	nodes := make([]*yaml.Node, len(values))
	// The values to encode, and where their nodes go.
	var rest []any
	var at []int
	for i, v := range values {
		if s, ok := v.(string); ok && isWord(s) {
			nodes[i] = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
			continue
		}
		rest, at = append(rest, v), append(at, i)
	}
	for len(rest) > 0 {
		batch := rest[:min(len(rest), scalarBatch)]
		rest = rest[len(batch):]
		var seq yaml.Node
		if err := seq.Encode(batch); err == nil && seq.Kind == yaml.SequenceNode && len(seq.Content) == len(batch) {
			for _, n := range seq.Content {
				nodes[at[0]], at = n, at[1:]
			}
			continue
		}
		for range batch {
			n := &yaml.Node{}
			_ = n.Encode(values[at[0]]) // sops ignores this error too: the node stays empty
			nodes[at[0]], at = n, at[1:]
		}
	}
	return &scalarNodes{nodes: nodes}
}

// isWord reports whether s is a plain YAML string that yaml writes as it
// is: an ASCII letter, then letters, digits, '-' and '_', and none of the
// words YAML 1.1 or 1.2 reads as a boolean or null. Such a string resolves
// to !!str, needs no quotes, and is never folded.
func isWord(s string) bool {
	if s == "" || !('a' <= s[0]|0x20 && s[0]|0x20 <= 'z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !('a' <= c|0x20 && c|0x20 <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	if len(s) > 5 {
		return true
	}
	switch strings.ToLower(s) {
	case "y", "n", "yes", "no", "on", "off", "true", "false", "null":
		return false
	}
	return true
}

// collectScalars appends the keys and scalar values of v in the order
// appendMapping and appendSequence take them.
func collectScalars(v any, out *[]any) {
	switch v := v.(type) {
	case sops.TreeBranch:
		for _, item := range v {
			if _, ok := item.Key.(sops.Comment); ok {
				continue
			}
			*out = append(*out, item.Key)
			collectScalars(item.Value, out)
		}
	case []any:
		for _, item := range v {
			if _, ok := item.(sops.Comment); !ok {
				collectScalars(item, out)
			}
		}
	default:
		*out = append(*out, v)
	}
}

// valueNode is the node of a mapping, a sequence or a scalar.
func valueNode(v any, scalars *scalarNodes) *yaml.Node {
	switch v := v.(type) {
	case sops.TreeBranch:
		n := &yaml.Node{Kind: yaml.MappingNode}
		appendMapping(n, v, scalars)
		return n
	case []any:
		n := &yaml.Node{Kind: yaml.SequenceNode}
		appendSequence(n, v, scalars)
		return n
	}
	return scalars.next()
}

// pendingComments are the comments read since the last key or item, placed
// as sops places them: whole-line comments above the next entry (or on the
// collection when it comes first), inline ones on the next entry's line, and
// whatever is left at the end below the last entry.
type pendingComments struct{ head, inline []string }

func (p *pendingComments) add(c sops.Comment) {
	if c.Inline {
		p.inline = append(p.inline, c.Value)
	} else {
		p.head = append(p.head, c.Value)
	}
}

// joinComments writes comments as YAML comment lines.
func joinComments(comments []string) string {
	return "#" + strings.Join(comments, "\n#")
}

// prependHead puts comments above n, before any it has.
func prependHead(n *yaml.Node, comments []string) {
	if len(comments) == 0 {
		return
	}
	if c := joinComments(comments); n.HeadComment != "" {
		n.HeadComment = c + "\n" + n.HeadComment
	} else {
		n.HeadComment = c
	}
}

// appendLine adds comments to n's line comment.
func appendLine(n *yaml.Node, comments []string) { appendTo(&n.LineComment, comments) }

// appendFoot adds comments below n.
func appendFoot(n *yaml.Node, comments []string) { appendTo(&n.FootComment, comments) }

// appendTo adds comments on lines of their own after those in field.
func appendTo(field *string, comments []string) {
	if len(comments) == 0 {
		return
	}
	if c := joinComments(comments); *field != "" {
		*field += "\n" + c
	} else {
		*field = c
	}
}

// appendMapping adds the entries of branch to mapping.
func appendMapping(mapping *yaml.Node, branch sops.TreeBranch, scalars *scalarNodes) {
	var p pendingComments
	first := true
	for _, item := range branch {
		if c, ok := item.Key.(sops.Comment); ok {
			p.add(c)
			continue
		}
		if first {
			prependHead(mapping, p.head)
			p.head, first = nil, false
		}
		key := scalars.next()
		prependHead(key, p.head)
		value := valueNode(item.Value, scalars)
		appendLine(value, p.inline)
		p = pendingComments{}
		mapping.Content = append(mapping.Content, key, value)
	}
	finishComments(mapping, first, len(mapping.Content)-2, p)
}

// appendSequence adds the items of list to sequence.
func appendSequence(sequence *yaml.Node, list []any, scalars *scalarNodes) {
	var p pendingComments
	first := true
	for _, item := range list {
		if c, ok := item.(sops.Comment); ok {
			p.add(c)
			continue
		}
		if first {
			prependHead(sequence, p.head)
			p.head, first = nil, false
		}
		n := valueNode(item, scalars)
		prependHead(n, p.head)
		appendLine(n, p.inline)
		p = pendingComments{}
		sequence.Content = append(sequence.Content, n)
	}
	finishComments(sequence, first, len(sequence.Content)-1, p)
}

// finishComments places the comments left after the last entry: on the
// collection when it has no entry, else below the entry at last.
func finishComments(n *yaml.Node, empty bool, last int, p pendingComments) {
	left := append(p.head, p.inline...)
	if len(left) == 0 {
		return
	}
	if empty {
		prependHead(n, left)
		return
	}
	appendFoot(n.Content[last], left)
}
