package decrypt

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

// yamlStore is sops' YAML store with its plain-file emitter replaced by
// emitYAML. sops turns every key and scalar into a yaml.Node with
// yaml.Node.Encode, which sets up a whole YAML emitter and parser per call:
// about 120 bytes allocated for every byte of a flat document, and most of
// the time spent. emitYAML encodes all scalars of a document in one call and
// builds the same node tree around them, so the encoder writes the same
// bytes. Loading, decryption and the MAC check stay sops' own.
type yamlStore struct {
	*sopsyaml.Store
	indent int
}

// newYAMLStore returns the YAML store with c's settings, as `sops decrypt`
// configures it.
func newYAMLStore(c *config.YAMLStoreConfig) (yamlStore, error) {
	indent := c.Indent
	switch {
	case indent < 0:
		return yamlStore{}, errors.New("a negative YAML indentation is not accepted")
	case indent == 0:
		indent = sopsyaml.IndentDefault
	}
	return yamlStore{Store: sopsyaml.NewStore(c), indent: indent}, nil
}

// EmitPlainFile returns exactly what sops' YAML store returns for in: one
// YAML document per branch.
func (s yamlStore) EmitPlainFile(in sops.TreeBranches) ([]byte, error) {
	if len(in) == 0 {
		// No document: sops writes nothing (yaml cannot close a stream it
		// never started).
		return nil, nil
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(s.indent)
	for _, branch := range in {
		scalars := encodeScalars(branch)
		mapping := &yaml.Node{Kind: yaml.MappingNode}
		appendMapping(mapping, branch, scalars)
		if err := enc.Encode(&yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{mapping}}); err != nil {
			return nil, fmt.Errorf("write YAML: %w", err)
		}
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("write YAML: %w", err)
	}
	return b.Bytes(), nil
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
func encodeScalars(branch sops.TreeBranch) *scalarNodes {
	var values []any
	collectScalars(branch, &values)
	nodes := make([]*yaml.Node, 0, len(values))
	for len(values) > 0 {
		batch := values[:min(len(values), scalarBatch)]
		values = values[len(batch):]
		var seq yaml.Node
		if err := seq.Encode(batch); err == nil && seq.Kind == yaml.SequenceNode && len(seq.Content) == len(batch) {
			nodes = append(nodes, seq.Content...)
			continue
		}
		for _, v := range batch {
			n := &yaml.Node{}
			_ = n.Encode(v) // sops ignores this error too: the node stays empty
			nodes = append(nodes, n)
		}
	}
	return &scalarNodes{nodes: nodes}
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
