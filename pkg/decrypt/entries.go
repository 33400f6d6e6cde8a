package decrypt

import (
	"github.com/getsops/sops/v3"
	sopsstores "github.com/getsops/sops/v3/stores"
)

// Entry is one top-level key of a flat document and its value as text.
type Entry struct {
	Key   string
	Value []byte
}

// iniDefaultSection is where sops' INI store puts keys outside any section.
const iniDefaultSection = "DEFAULT"

// Entries returns the top-level entries of a decrypted document whose
// plaintext is a flat map: dotenv, or YAML, JSON or INI whose top-level values
// (for INI: the keys outside any section) are all scalars. Values are written
// as sops writes them into a dotenv file, without its newline escaping; null
// becomes the empty string. Comments are skipped. A binary document or one
// holding a nested map or a list returns an *Error.
func (r Result) Entries() ([]Entry, error) {
	notFlat := fail(ReasonUnsupported, "expansion needs a flat map of scalar values, and this document is not one")
	if r.Format == FormatBinary || len(r.branches) != 1 {
		return nil, notFlat
	}
	branch := r.branches[0]
	if r.Format == FormatINI {
		branch = iniDefaults(branch)
		if branch == nil {
			return nil, notFlat
		}
	}
	out := make([]Entry, 0, len(branch))
	for _, item := range branch {
		key, ok := item.Key.(string)
		if !ok {
			continue // a comment
		}
		if sopsstores.IsComplexValue(item.Value) {
			return nil, notFlat
		}
		var v []byte
		switch val := item.Value.(type) {
		case nil:
		case string:
			v = []byte(val)
		default:
			v = []byte(sopsstores.ValToString(val))
		}
		out = append(out, Entry{Key: key, Value: v})
	}
	return out, nil
}

// iniDefaults returns the DEFAULT section of an INI tree when it is the only
// section, and nil otherwise.
func iniDefaults(branch sops.TreeBranch) sops.TreeBranch {
	var found sops.TreeBranch
	for _, item := range branch {
		if _, comment := item.Key.(sops.Comment); comment {
			continue
		}
		section, ok := item.Value.(sops.TreeBranch)
		if !ok || item.Key != iniDefaultSection || found != nil {
			return nil
		}
		found = section
	}
	return found
}
