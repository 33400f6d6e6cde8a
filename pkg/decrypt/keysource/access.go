package keysource

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/getsops/sops/v3/keyservice"
)

// ErrNotGranted is wrapped by Access errors: the key exists but this request
// may not use it.
var ErrNotGranted = errors.New("not granted")

// ErrCheckFailed is wrapped by Access errors when the decision could not be
// made (the namespace's labels or a SubjectAccessReview could not be read).
// It is not a refusal: the same request may be allowed once the check works.
var ErrCheckFailed = errors.New("the policy check failed")

// Access decides, per request, which configured keys may be used. Allowed
// returns nil when the key named name may be used, an error wrapping
// ErrNotGranted whose text says why (key, namespace, kind, user; never a
// value), or one wrapping ErrCheckFailed when it could not decide. A nil
// Access allows every key.
type Access interface {
	Allowed(ctx context.Context, name string) error
}

// Matcher is implemented by Sources that can tell, from a payload's metadata
// alone, that a wrapped key is meant for them (an age recipient, a PGP
// fingerprint). It only explains a denial: authorization always follows the
// key that actually unwraps.
type Matcher interface {
	Matches(key *keyservice.Key) bool
}

// Matches reports whether the metadata names one of a's recipients.
func (a *Age) Matches(key *keyservice.Key) bool {
	k := key.GetAgeKey()
	if k == nil {
		return false
	}
	_, ok := a.recipients[k.Recipient]
	return ok
}

// Matches reports whether the metadata names a fingerprint of p's keyring.
func (p *PGP) Matches(key *keyservice.Key) bool {
	k := key.GetPgpKey()
	return k != nil && p.fingerprints[strings.ToUpper(k.Fingerprint)]
}

// glob is a path.Match pattern from the config (a key ARN, resource ID or
// key name pattern), validated once when the source is built.
type glob string

// newGlob checks pattern; the error names field.
func newGlob(field, pattern string) (glob, error) {
	if _, err := path.Match(pattern, ""); err != nil {
		return "", fmt.Errorf("%s %q: not a valid glob", field, pattern)
	}
	return glob(pattern), nil
}

// match reports whether s matches the pattern.
func (g glob) match(s string) bool {
	ok, _ := path.Match(string(g), s)
	return ok
}

// allowed asks access about s. A nil Access allows everything.
func allowed(ctx context.Context, access Access, s Source) error {
	if access == nil {
		return nil
	}
	return access.Allowed(ctx, s.Name())
}
