package clusterkeys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// Type is the kind of age identity a key generates.
type Type string

// The identity types. X25519 is the default: every age and sops release
// reads it. Hybrid (ML-KEM-768 + X25519) resists a future quantum computer
// and needs age 1.3 or sops 3.11 to encrypt for.
const (
	X25519 Type = "x25519"
	Hybrid Type = "hybrid"
)

// State is where a generation is in its life.
type State string

// The states of a generation. The newest generation is current: it is the
// one published for encrypting. Older ones are active: they still decrypt.
// A retired generation no longer decrypts; its identity stays in the
// Secret, since nothing is ever deleted automatically.
const (
	StateCurrent State = "current"
	StateActive  State = "active"
	StateRetired State = "retired"
)

// Spec is one configured key that the webhook generates.
type Spec struct {
	// Name is the key's name in the config.
	Name string
	// Type is the identity type of new generations ("" is X25519).
	Type Type
	// RotateEvery is how old the current generation may get before a new
	// one replaces it; 0 never rotates.
	RotateEvery time.Duration
	// BreakGlass are age recipients, whose identities are kept offline,
	// that each generation is wrapped for (its backup) in the write that
	// makes it current.
	BreakGlass []string
	// Seal, if set, seals a generation's identity text for the break-glass
	// KMS or Vault keys: a sops document (its sealed backup), made in the
	// same write. A generation whose backup cannot be made is not written.
	Seal func(ctx context.Context, identity string) ([]byte, error)
}

// DefaultRotateEvery is the rotation period of a generated key whose
// config does not set one: 90 days. A rotation re-encrypts nothing and
// older generations keep decrypting, so its worth is that new files stop
// depending on an old key, which an operator can then retire; a quarter
// keeps that window short while a team's .sops.yaml changes four times a
// year, and MaxGenerations lasts 16 years.
const DefaultRotateEvery = 90 * 24 * time.Hour

// Generation is the public record of one identity of a key.
type Generation struct {
	Number    int       `json:"generation" yaml:"generation"`
	Type      Type      `json:"type" yaml:"type"`
	Recipient string    `json:"recipient" yaml:"recipient"`
	Created   time.Time `json:"created" yaml:"created"`
	State     State     `json:"state" yaml:"state"`
}

// Key is one generated key: its generations, newest first, and their
// identities.
type Key struct {
	Name        string       `json:"name" yaml:"name"`
	Generations []Generation `json:"generations" yaml:"generations"`

	identities map[int]age.Identity
	// backups are the generations' identities wrapped for the break-glass
	// recipients, armored age files, by generation; sealed the ones sealed
	// for the break-glass keys, sops documents.
	backups, sealed map[int][]byte
}

// Backup returns generation n's backup, an armored age file that the
// break-glass identities open, or nil.
func (k *Key) Backup(n int) []byte { return k.backups[n] }

// SealedBackup returns generation n's sealed backup, a sops document that
// the break-glass KMS or Vault keys open, or nil.
func (k *Key) SealedBackup(n int) []byte { return k.sealed[n] }

// Identity returns the private identity of generation n, or nil. The
// caller keeps it in memory only.
func (k *Key) Identity(n int) age.Identity { return k.identities[n] }

// Current returns the current generation, or nil when every generation
// is retired.
func (k *Key) Current() *Generation {
	for i := range k.Generations {
		if k.Generations[i].State == StateCurrent {
			return &k.Generations[i]
		}
	}
	return nil
}

// MaxGenerations caps the generations one key may have: each is an
// identity every payload for the key may be tried against.
const MaxGenerations = 64

// MaxKeys caps the keys the Secret may hold.
const MaxKeys = 1000

// MaxStoredGenerations caps the generations of all keys together: each
// takes about 300 bytes of the Secret (its identity, base64-encoded, and
// its index entry), and the API server stores objects of up to 1 MiB.
const MaxStoredGenerations = 2048

// indexEntry is the name of the Secret's public index.
const indexEntry = "generations.json"

// index is the content of indexEntry.
type index struct {
	Keys []*Key `json:"keys" yaml:"keys"`
}

// namePattern is what a generated key's name may be: it names Secret data
// entries and provenance labels ("name@generation").
var namePattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$`)

// ValidName reports whether name may be a generated key's name: lower-case
// letters, digits, '-' and '.', at most 63, as a DNS label.
func ValidName(name string) bool { return namePattern.MatchString(name) }

// entryName is the Secret data entry of generation n of key name.
func entryName(name string, n int) string { return name + "." + strconv.Itoa(n) + ".agekey" }

// BackupName is the name of generation n of key name's backup: its Secret
// data entry, and its entry in the backups ConfigMap.
func BackupName(name string, n int) string { return entryName(name, n) + ".age" }

// SealedBackupName is the name of generation n of key name's sealed
// backup, in the Secret and the backups ConfigMap.
func SealedBackupName(name string, n int) string { return entryName(name, n) + ".sops.yaml" }

// SealedEntry is the key, in a sealed backup, whose value is the identity:
// `sops decrypt --extract '["identity"]'` prints it.
const SealedEntry = "identity"

// MaxBackupSize caps a stored backup.
const MaxBackupSize = 16 << 10

// generate returns a new identity of type t and its recipient.
func generate(t Type) (age.Identity, string, string, error) {
	switch t {
	case X25519, "":
		id, err := age.GenerateX25519Identity()
		if err != nil {
			return nil, "", "", err
		}
		return id, id.Recipient().String(), id.String(), nil
	case Hybrid:
		id, err := age.GenerateHybridIdentity()
		if err != nil {
			return nil, "", "", err
		}
		return id, id.Recipient().String(), id.String(), nil
	}
	return nil, "", "", fmt.Errorf("unknown key type %q (want %s or %s)", t, X25519, Hybrid)
}

// wrapBackup encrypts an identity's text for the break-glass recipients,
// armored. Errors name the recipient, never the identity.
func wrapBackup(text string, breakGlass []string) ([]byte, error) {
	return keysource.SealAge([]byte(text+"\n"), breakGlass...)
}

// parseIdentity parses one stored identity and returns it with its
// recipient. Errors never quote the text.
func parseIdentity(text string) (age.Identity, string, error) {
	text = strings.TrimSpace(text)
	switch {
	case strings.HasPrefix(text, "AGE-SECRET-KEY-PQ-1"):
		id, err := age.ParseHybridIdentity(text)
		if err != nil {
			return nil, "", errors.New("malformed hybrid identity")
		}
		return id, id.Recipient().String(), nil
	case strings.HasPrefix(text, "AGE-SECRET-KEY-1"):
		id, err := age.ParseX25519Identity(text)
		if err != nil {
			return nil, "", errors.New("malformed X25519 identity")
		}
		return id, id.Recipient().String(), nil
	}
	return nil, "", errors.New("not an age identity")
}

// decode reads the keys of a Secret's data: the index, and each listed
// generation's identity, which must match its recorded recipient. Errors
// name the key and the generation.
func decode(data map[string][]byte) ([]*Key, error) {
	raw, ok := data[indexEntry]
	if !ok {
		return nil, nil
	}
	var idx index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("%s: %w", indexEntry, err)
	}
	if len(idx.Keys) > MaxKeys {
		return nil, fmt.Errorf("%s: more than %d keys", indexEntry, MaxKeys)
	}
	if n := storedGenerations(idx.Keys); n > MaxStoredGenerations {
		return nil, fmt.Errorf("%s: more than %d generations", indexEntry, MaxStoredGenerations)
	}
	seen := map[string]bool{}
	for _, k := range idx.Keys {
		if !ValidName(k.Name) || seen[k.Name] {
			return nil, fmt.Errorf("%s: key name %q is invalid or listed twice", indexEntry, k.Name)
		}
		seen[k.Name] = true
		if len(k.Generations) > MaxGenerations {
			return nil, fmt.Errorf("key %q: more than %d generations", k.Name, MaxGenerations)
		}
		k.identities = make(map[int]age.Identity, len(k.Generations))
		for _, g := range k.Generations {
			text, ok := data[entryName(k.Name, g.Number)]
			if !ok {
				return nil, fmt.Errorf("key %q generation %d: no identity stored", k.Name, g.Number)
			}
			id, recipient, err := parseIdentity(string(text))
			if err != nil {
				return nil, fmt.Errorf("key %q generation %d: %w", k.Name, g.Number, err)
			}
			if recipient != g.Recipient {
				return nil, fmt.Errorf("key %q generation %d: the stored identity does not match the recorded recipient", k.Name, g.Number)
			}
			k.identities[g.Number] = id
			if b, ok := data[BackupName(k.Name, g.Number)]; ok && len(b) <= MaxBackupSize {
				k.backups = setBackup(k.backups, g.Number, b)
			}
			if b, ok := data[SealedBackupName(k.Name, g.Number)]; ok && len(b) <= MaxBackupSize {
				k.sealed = setBackup(k.sealed, g.Number, b)
			}
		}
		sortGenerations(k)
	}
	return idx.Keys, nil
}

// setBackup returns m, made if nil, with generation n's backup b.
func setBackup(m map[int][]byte, n int, b []byte) map[int][]byte {
	if m == nil {
		m = map[int][]byte{}
	}
	m[n] = b
	return m
}

// storedGenerations counts the generations of keys.
func storedGenerations(keys []*Key) int {
	n := 0
	for _, k := range keys {
		n += len(k.Generations)
	}
	return n
}

// sortGenerations orders a key's generations newest first.
func sortGenerations(k *Key) {
	slices.SortFunc(k.Generations, func(a, b Generation) int { return b.Number - a.Number })
}

// encodeIndex returns the index entry for keys.
func encodeIndex(keys []*Key) ([]byte, error) {
	return json.MarshalIndent(index{Keys: keys}, "", "  ")
}
