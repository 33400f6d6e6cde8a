package decrypt

import "github.com/sops-webhook/sops-webhook/pkg/decrypt/internal/store"

// The caps on a document's structure, and what each of its items may cost;
// package store says why each is what it is.
const (
	MaxDocumentItems = store.MaxDocumentItems
	MaxINIItems      = store.MaxINIItems
	MaxDocumentDepth = store.MaxDocumentDepth
	ItemCost         = store.ItemCost
)

// Items returns an upper bound, in proportion, of the objects sops' parsers
// build for document, from its bytes alone (store.Items). A caller weighs a
// payload by it; Document refuses one over MaxDocumentItems (MaxINIItems
// for INI).
func Items(document []byte) int { return store.Items(document) }
