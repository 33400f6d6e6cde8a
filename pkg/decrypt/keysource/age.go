package keysource

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/getsops/sops/v3/keyservice"
)

// Age is a Source of age identities: X25519 (AGE-SECRET-KEY-1...) and
// post-quantum hybrid ML-KEM-768 + X25519 (AGE-SECRET-KEY-PQ-1...).
type Age struct {
	name       string
	identities []age.Identity
	// recipients are the identities' public keys, for Matches, with the
	// generation each belongs to (0 for a key that has none).
	recipients map[string]int
	// retired are the recipients of retired generations: never tried,
	// only recognised (RetiredGeneration).
	retired map[string]int
}

// AgeGeneration is one generation of a key the webhook generated: its
// number and its identity. A retired generation's identity is never used;
// its recipient is recognised, to say why a payload for it is refused.
type AgeGeneration struct {
	Number   int
	Identity age.Identity
	Retired  bool
}

// NewAgeGenerations returns an Age source named name holding the
// identities of a generated key's decrypting generations. The key it
// opens a data key with is reported as "name@number" (Generations).
func NewAgeGenerations(name string, gens []AgeGeneration) *Age {
	a := &Age{name: name, recipients: map[string]int{}, retired: map[string]int{}}
	for _, g := range gens {
		r := ageRecipient(g.Identity)
		if g.Retired {
			a.retired[r] = g.Number
			continue
		}
		a.identities = append(a.identities, g.Identity)
		if r != "" {
			a.recipients[r] = g.Number
		}
	}
	return a
}

// RetiredGeneration returns the retired generation whose recipient key's
// metadata names, or 0.
func (a *Age) RetiredGeneration(key *keyservice.Key) int {
	if k := key.GetAgeKey(); k != nil {
		return a.retired[k.Recipient]
	}
	return 0
}

// Generation returns the generation of a's identity that key's metadata
// names, or 0 when a's key has no generations or none matches.
func (a *Age) Generation(key *keyservice.Key) int {
	if k := key.GetAgeKey(); k != nil {
		return a.recipients[k.Recipient]
	}
	return 0
}

// Recipients returns the public keys of a's identities, sorted.
func (a *Age) Recipients() []string {
	out := make([]string, 0, len(a.recipients))
	for r := range a.recipients {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// ageRecipient returns the recipient string of an X25519 or hybrid
// identity, or "".
func ageRecipient(id age.Identity) string {
	switch id := id.(type) {
	case *age.X25519Identity:
		return id.Recipient().String()
	case *age.HybridIdentity:
		return id.Recipient().String()
	}
	return ""
}

// LoadAge reads an age identity file. Blank lines and # comments are skipped.
// Plugin identities (AGE-PLUGIN-...) are refused: they would run a program.
// Errors name the file and the line number, never the line.
func LoadAge(name, path string) (*Age, error) {
	raw, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	ids, err := ParseAgeIdentities(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return newAge(name, ids), nil
}

func newAge(name string, ids []age.Identity) *Age {
	a := &Age{name: name, identities: ids, recipients: map[string]int{}}
	for _, id := range ids {
		if r := ageRecipient(id); r != "" {
			a.recipients[r] = 0
		}
	}
	return a
}

// ParseAgeIdentities parses the content of an age identity file. It fails on
// an unknown or plugin identity, and when the file holds none.
func ParseAgeIdentities(raw []byte) ([]age.Identity, error) {
	var ids []age.Identity
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 0, 4096), MaxKeyFileSize)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var (
			id  age.Identity
			err error
		)
		switch {
		case strings.HasPrefix(line, "AGE-SECRET-KEY-PQ-1"):
			id, err = age.ParseHybridIdentity(line)
		case strings.HasPrefix(line, "AGE-SECRET-KEY-1"):
			id, err = age.ParseX25519Identity(line)
		case strings.HasPrefix(line, "AGE-PLUGIN-"):
			return nil, fmt.Errorf("line %d: age plugin identities are not supported", n)
		default:
			return nil, fmt.Errorf("line %d: not an age identity", n)
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: malformed age identity", n)
		}
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read identities: %w", err)
	}
	if len(ids) == 0 {
		return nil, errors.New("no age identity found")
	}
	return ids, nil
}

// Name returns the key's configured name.
func (a *Age) Name() string { return a.name }

// Unwrap opens an armored age file holding a data key. It returns ErrNotHeld
// for a non-age key or when none of its identities matches a recipient stanza.
func (a *Age) Unwrap(_ context.Context, key *keyservice.Key, ciphertext []byte) ([]byte, error) {
	if key.GetAgeKey() == nil {
		return nil, ErrNotHeld
	}
	if n := ageStanzas(ciphertext); n > MaxAgeStanzas {
		return nil, fmt.Errorf("age ciphertext with more than %d recipient stanzas", MaxAgeStanzas)
	}
	r, err := age.Decrypt(armor.NewReader(bytes.NewReader(ciphertext)), a.identities...)
	if err != nil {
		var noMatch *age.NoIdentityMatchError
		if errors.As(err, &noMatch) {
			return nil, ErrNotHeld
		}
		return nil, errors.New("malformed age ciphertext")
	}
	plain, err := io.ReadAll(io.LimitReader(r, MaxDataKeySize+1))
	if err != nil {
		return nil, errors.New("age ciphertext failed authentication")
	}
	return plain, nil
}

// MaxAgeStanzas caps the recipient stanzas of a wrapped data key: each is
// tried against every identity, and sops writes one.
const MaxAgeStanzas = 4

// ageStanzas counts the recipient stanzas in the header of an armored age
// file, up to MaxAgeStanzas+1; a file that does not read as one has none,
// and is age.Decrypt's to refuse.
func ageStanzas(ciphertext []byte) int {
	sc := bufio.NewScanner(armor.NewReader(bytes.NewReader(ciphertext)))
	sc.Buffer(make([]byte, 0, 1024), MaxWrappedKeySize)
	n := 0
	for sc.Scan() && n <= MaxAgeStanzas {
		line := sc.Bytes()
		switch {
		case bytes.HasPrefix(line, []byte("---")):
			return n
		case bytes.HasPrefix(line, []byte("-> ")):
			n++
		}
	}
	return n
}
