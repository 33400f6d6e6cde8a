package store

import "github.com/getsops/sops/v3"

// MaxDocumentDepth caps how deeply the maps and lists of a document nest,
// its own top-level map included. sops prints the plaintext indented, one
// step more for each level, so a document nested d deep can print d steps
// on each of its lines: the indentation, not the content, then makes the
// output, and what it costs to write it, grow with the square of the
// input; the parsers stop only at 10,000 levels (yaml, encoding/json).
// Configuration nests a dozen levels; sops itself has no such cap. At this
// depth the indentation is within ItemCost (TestItemCost).
const MaxDocumentDepth = 32

// TooDeep reports whether the maps and lists of branches nest deeper than
// MaxDocumentDepth. It stops at that depth, so it never recurses deeper.
func TooDeep(branches sops.TreeBranches) bool {
	for _, b := range branches {
		if nestsTooDeep(b, 0) {
			return true
		}
	}
	return false
}

// nestsTooDeep reports whether v, inside depth maps and lists, is or holds
// a map or list nested deeper than MaxDocumentDepth.
func nestsTooDeep(v any, depth int) bool {
	switch v := v.(type) {
	case sops.TreeBranch:
		if depth == MaxDocumentDepth {
			return true
		}
		for _, item := range v {
			if nestsTooDeep(item.Value, depth+1) {
				return true
			}
		}
	case []any:
		if depth == MaxDocumentDepth {
			return true
		}
		for _, x := range v {
			if nestsTooDeep(x, depth+1) {
				return true
			}
		}
	}
	return false
}
