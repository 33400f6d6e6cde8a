package store

import "github.com/sops-webhook/sops-webhook/pkg/decrypt/internal/token"

// What a document costs is not only its size. sops' stores parse a document
// into a tree of small objects: yaml's nodes, ini's sections, the tree
// itself. A document made of one-letter list items ("[a,a,a,…]") builds
// one node for every two bytes, far beyond the budget's 32 bytes per byte. Items bounds that number from the
// bytes alone, before anything is parsed, so that such a document is
// weighed by its items (at ItemCost each; the admission handler does the
// weighing) and refused past MaxDocumentItems.

// MaxDocumentItems caps the items (Items) of a document payload: such a
// document allocates at most MaxDocumentItems × ItemCost (160 MiB) in
// all. sops writes an encrypted value on a line of its own after its key,
// which counts 4, so 1 MiB of the shortest values sops writes counts about
// 53,000.
const MaxDocumentItems = 1 << 16

// MaxINIItems caps the items of an INI document. The INI parser sops uses
// compares each new key with every key of its section, so its time grows
// with the square of the keys; 16,384 items are at most 8,192 keys.
const MaxINIItems = 1 << 14

// ItemCost is the most memory, in bytes, that one item of a document
// allocates in all, from parsing to writing the plaintext, in the densest
// documents there are, with a margin: valid YAML documents holding one flow
// list, or one flow map, of one-letter values nested MaxDocumentDepth deep.
// Most of it is yaml's encoder, which keeps every event of a call, and the
// indentation of each value. TestItemCost fails if any document it builds
// allocates more.
const ItemCost = 2560

// Items returns an upper bound, in proportion, of the objects sops' parsers
// build for document: two per line, and one per list item or complex key
// indicator ("- ", "? "), flow separator or opening bracket (",", "[",
// "{"), colon (":", which ends each key of a map, so that an entry of a
// flow map, a key and a value, counts two), comment mark ("#") and
// encrypted value. It reads the bytes once and allocates nothing. An
// encrypted value counts one when it has exactly the form sops writes
// (token.Scan): its fixed commas, colons and bracket could make at most a
// few nodes of a flow list, never a line or a list of any length.
func Items(document []byte) int {
	n := 0
	for i := 0; i < len(document); i++ {
		switch itemClass[document[i]] {
		case classNone:
		case classLine:
			n += 2
		case classMark:
			n++
		case classIndicator:
			if i+1 == len(document) || indicatorEnd[document[i+1]] {
				n++
			}
		case classToken:
			if _, _, m := token.Scan(document[i:]); m > 0 {
				n++
				i += m - 1
			}
		}
	}
	if len(document) > 0 && document[len(document)-1] != '\n' {
		n += 2 // a last line without its newline
	}
	return n
}

// What Items makes of a byte: itemClass, by a table, which a loop reads
// faster than it tests the bytes one by one.
const (
	classNone      = iota
	classLine      // '\n': two items
	classMark      // ',', '[', '{', ':', '#': one
	classIndicator // '-', '?': one when a blank follows (indicatorEnd)
	classToken     // 'E': one if an ENC[...] token starts here
)

var itemClass = func() (t [256]uint8) {
	t['\n'] = classLine
	for _, c := range ",[{:#" {
		t[c] = classMark
	}
	t['-'], t['?'] = classIndicator, classIndicator
	t['E'] = classToken
	return t
}()

var indicatorEnd = func() (t [256]bool) {
	for _, c := range " \n\t\r" {
		t[c] = true
	}
	return t
}()
