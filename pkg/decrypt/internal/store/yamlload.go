package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/getsops/sops/v3"
	sopsstores "github.com/getsops/sops/v3/stores"
	"go.yaml.in/yaml/v3"
)

// ErrAlias is returned by the YAML Store's Load for a document
// that uses a YAML alias. sops never writes one (it expands aliases when it
// encrypts), and expanding them is what makes a few hundred bytes of YAML
// cost gigabytes.
var ErrAlias = errors.New("the document uses a YAML alias")

// loadYAMLFile returns the tree sops' YAML store loads from in, or an
// error where sops' store fails, and also for a document with an alias
// (ErrAlias).
//
// sops' own loader parses the file twice: once into a map, only to have
// yaml reject duplicate keys in the first document, and once into nodes.
// yaml's duplicate check compares every key of a mapping with every other
// and writes an error line for each equal pair, quadratic in time and
// memory; and the node tree is turned into sops' tree expanding every
// alias, unbounded. This loader parses once, makes the same checks
// of the first document in linear time (checkFirstYAML), and builds the
// same tree (yamlTree).
func loadYAMLFile(in []byte) (sops.Tree, error) {
	branches, err := loadYAML(in)
	if err != nil {
		return sops.Tree{}, err
	}
	branches, metadata, err := sopsstores.ExtractMetadata(branches, sopsstores.MetadataOpts{Flatten: sopsstores.MetadataFlattenNone})
	if err != nil {
		return sops.Tree{}, err
	}
	return sops.Tree{Branches: branches, Metadata: metadata}, nil
}

// loadYAML returns a branch per YAML document of in, as sops'
// Store.LoadPlainFile does, or an error where it fails and for an alias.
func loadYAML(in []byte) (sops.TreeBranches, error) {
	var branches sops.TreeBranches
	dec := yaml.NewDecoder(bytes.NewReader(in))
	for first := true; ; first = false {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if err == io.EOF {
			if first && len(in) > 0 {
				// sops decodes the first document of a non-empty file
				// into a map, which fails when there is none.
				return nil, errors.New("no YAML document")
			}
			return branches, nil
		}
		if err != nil {
			return nil, fmt.Errorf("parsing YAML: %w", err)
		}
		if err := rejectAliases(&doc); err != nil {
			return nil, err
		}
		if first {
			if err := checkFirstYAML(&doc); err != nil {
				return nil, err
			}
		}
		branch, err := yamlTree{}.branch(&doc, make(sops.TreeBranch, 0), false)
		if err != nil {
			return nil, err
		}
		branches = append(branches, branch)
	}
}

// rejectAliases returns errYAMLAlias if n holds an alias.
func rejectAliases(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode {
		return ErrAlias
	}
	for _, c := range n.Content {
		if err := rejectAliases(c); err != nil {
			return err
		}
	}
	return nil
}

// checkFirstYAML fails where yaml fails to decode the first document into
// a map[string]interface{}, which is how sops checks it: a mapping with two
// keys of the same kind and text, a key that is not a scalar (the top
// level's keys are strings, deeper ones map keys), a scalar whose explicit
// tag does not fit its text, a merge key whose value is not a mapping or a
// list of mappings. The document has no aliases (rejectAliases). Unlike
// yaml's, the duplicate check takes linear time.
func checkFirstYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		if !isYAMLString(n) {
			var v any
			if err := n.Decode(&v); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		// Every key is a scalar, so yaml's comparison of kind and text
		// is one of text.
		seen := make(map[string]struct{}, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return errors.New("a mapping key is not a scalar")
			}
			if _, dup := seen[k.Value]; dup {
				return errors.New("a mapping key is defined twice")
			}
			seen[k.Value] = struct{}{}
			if isYAMLMerge(k) && !mergeable(v) {
				return errors.New("a merge key's value is not a mapping")
			}
		}
	}
	for _, c := range n.Content {
		if err := checkFirstYAML(c); err != nil {
			return err
		}
	}
	return nil
}

// isYAMLMerge reports whether yaml takes key n for a merge key (<<).
func isYAMLMerge(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" && (n.Tag == "" || n.Tag == "!" || n.ShortTag() == "!!merge")
}

// mergeable reports whether yaml merges v: a mapping or a list of them.
func mergeable(v *yaml.Node) bool {
	switch v.Kind {
	case yaml.MappingNode:
		return true
	case yaml.SequenceNode:
		for _, c := range v.Content {
			if c.Kind != yaml.MappingNode {
				return false
			}
		}
		return true
	}
	return false
}

// yamlScalar returns the value yaml decodes scalar n to. A string, the
// common case, is taken as it is; anything else is decoded by yaml.
func yamlScalar(n *yaml.Node) (any, error) {
	if isYAMLString(n) {
		return n.Value, nil
	}
	var v any
	err := n.Decode(&v)
	return v, err
}

// isYAMLString reports whether yaml decodes scalar n to its text as it is.
func isYAMLString(n *yaml.Node) bool {
	return n.Tag == "!!str" || n.Tag == "tag:yaml.org,2002:str"
}

// yamlTree turns yaml nodes into sops' tree as sops' YAML store does: the
// same items, comments split into lines in the same places, the same nil
// and empty collections. Scalars that yaml cannot decode become nil, as in
// sops (the first document has been checked not to hold any).
type yamlTree struct{}

// branch appends the entries of n, a document or mapping, to b. The
// comments around n are added unless the caller took them
// (commentsTaken).
func (t yamlTree) branch(n *yaml.Node, b sops.TreeBranch, commentsTaken bool) (sops.TreeBranch, error) {
	if !commentsTaken {
		b = appendCommentItems(b, n.HeadComment, false)
		b = appendCommentItems(b, n.LineComment, false)
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			var err error
			if b, err = t.branch(c, b, false); err != nil {
				return nil, err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			b = appendCommentItems(b, k.HeadComment, false)
			b = appendCommentItems(b, k.LineComment, false)
			leaf := v.Kind == yaml.ScalarNode
			if leaf {
				b = appendCommentItems(b, v.HeadComment, false)
				b = appendCommentItems(b, v.LineComment, true)
			}
			key, _ := yamlScalar(k) // sops ignores this error too
			value, err := t.value(v, leaf)
			if err != nil {
				return nil, err
			}
			b = append(b, sops.TreeItem{Key: key, Value: value})
			if leaf {
				b = appendCommentItems(b, v.FootComment, false)
			}
			b = appendCommentItems(b, k.FootComment, false)
		}
	case yaml.SequenceNode:
		return nil, errors.New("a YAML document that is a list is not supported")
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			// An empty document: nothing, not even its foot comment.
			return b, nil
		}
		return nil, errors.New("a YAML document that is a scalar is not supported")
	}
	if !commentsTaken {
		b = appendCommentItems(b, n.FootComment, false)
	}
	return b, nil
}

// value returns the tree value of a node inside a document.
func (t yamlTree) value(n *yaml.Node, commentsTaken bool) (any, error) {
	switch n.Kind {
	case yaml.SequenceNode:
		var list []any
		if !commentsTaken {
			list = appendCommentValues(list, n.HeadComment, false)
			list = appendCommentValues(list, n.LineComment, false)
		}
		for _, c := range n.Content {
			list = appendCommentValues(list, c.HeadComment, false)
			list = appendCommentValues(list, c.LineComment, true)
			v, err := t.value(c, true)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
			list = appendCommentValues(list, c.FootComment, false)
		}
		if !commentsTaken {
			list = appendCommentValues(list, n.FootComment, false)
		}
		return list, nil
	case yaml.MappingNode:
		return t.branch(n, make(sops.TreeBranch, 0), commentsTaken)
	case yaml.ScalarNode:
		v, _ := yamlScalar(n) // sops ignores this error too
		return v, nil
	}
	// Aliases were rejected; a document cannot nest in a document.
	return nil, fmt.Errorf("unexpected YAML node kind %d", n.Kind)
}

// commentLines calls add with each non-empty line of a yaml comment, its
// leading '#' cut off.
func commentLines(comment string, add func(sops.Comment)) {
	if comment == "" {
		return
	}
	for line := range strings.SplitSeq(comment, "\n") {
		if line != "" {
			add(sops.Comment{Value: line[1:]})
		}
	}
}

// appendCommentItems appends each line of comment to b as a comment entry,
// inline for a value's line comment.
func appendCommentItems(b sops.TreeBranch, comment string, inline bool) sops.TreeBranch {
	commentLines(comment, func(c sops.Comment) {
		c.Inline = inline
		b = append(b, sops.TreeItem{Key: c})
	})
	return b
}

// appendCommentValues appends each line of comment to a list.
func appendCommentValues(list []any, comment string, inline bool) []any {
	commentLines(comment, func(c sops.Comment) {
		c.Inline = inline
		list = append(list, c)
	})
	return list
}
