package decrypt

import (
	"context"
	"fmt"
	"slices"

	"github.com/getsops/sops/v3"
	sopsage "github.com/getsops/sops/v3/age"
	"github.com/getsops/sops/v3/keys"
	"github.com/getsops/sops/v3/keyservice"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// MaxRewrapRecipients caps the recipients and keys one rewrap may add: the
// current generation and the break-glass recipients and keys.
const MaxRewrapRecipients = 8

// RewrapPlan is what a rewrap changes in the holders of a data key.
type RewrapPlan struct {
	// Add are age recipients the data key is also wrapped for.
	Add []string
	// Keys are configured KMS or Vault keys it is also wrapped with.
	Keys []keysource.Wrapper
	// Drop are age recipients that no longer hold it.
	Drop []string
}

// RewrapTargets says, for the configured key that opened a document's data
// key (named as keysource.Client.Used names it: "name@generation" for a
// generated key), what the rewrap changes. An error refuses the rewrap; its
// text is the user's to read.
type RewrapTargets func(opened string) (RewrapPlan, error)

// Rewrapped is a rewrapped document.
type Rewrapped struct {
	// File is the document with its data key wrapped for Added too, and no
	// longer for Dropped; its values, MAC and other metadata are as they
	// were.
	File []byte
	// Keys are the configured keys that opened the data key.
	Keys []string
	// Added are the age recipients and the names of the configured keys
	// added; Dropped the age recipients removed.
	Added, Dropped []string
}

// Rewrap opens value's data key under exactly the checks Document applies
// (the keys access allows, the MAC) and returns the document with that
// data key also wrapped for the recipients targets names for the key that
// opened it, as `sops updatekeys` would write it. No plaintext value leaves
// this function. A document with several key groups (Shamir) is refused:
// each group holds a share, not the data key. Errors are *Error.
func (d *Decryptor) Rewrap(ctx context.Context, value []byte, f Format, access keysource.Access, targets RewrapTargets) (res Rewrapped, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = Rewrapped{}, fail(ReasonMalformed, "the sops library rejected its content")
		}
	}()
	_, dataKey, opened, err := d.open(ctx, value, f, access)
	if err != nil {
		return Rewrapped{}, err
	}
	// The tree open returned is decrypted; the answer is the encrypted one.
	tree, err := stores[f].Load(value)
	if err != nil {
		return Rewrapped{}, fail(ReasonMalformed, fmt.Sprintf("it does not parse as an encrypted %s document", f))
	}
	if len(tree.Metadata.KeyGroups) != 1 {
		return Rewrapped{}, fail(ReasonUnsupported, "it has several key groups (a Shamir threshold): each holds a share of the data key, so it cannot be rewrapped here")
	}
	if len(opened) != 1 {
		return Rewrapped{}, fail(ReasonInternal, "the data key was opened by no single key")
	}
	plan, err := targets(opened[0])
	if err != nil {
		return Rewrapped{}, fail(ReasonUnsupported, err.Error())
	}
	if len(plan.Add)+len(plan.Keys) > MaxRewrapRecipients {
		return Rewrapped{}, fail(ReasonInternal, fmt.Sprintf("more than %d recipients and keys to add", MaxRewrapRecipients))
	}
	group, added, dropped, err := rewrapGroup(ctx, tree.Metadata.KeyGroups[0], dataKey, plan)
	if err != nil {
		return Rewrapped{}, err
	}
	tree.Metadata.KeyGroups[0] = group
	out, err := stores[f].EmitEncrypted(tree)
	if err != nil {
		return Rewrapped{}, fail(ReasonMalformed, fmt.Sprintf("it cannot be written back as %s", f))
	}
	return Rewrapped{File: out, Keys: opened, Added: added, Dropped: dropped}, nil
}

// rewrapGroup returns group without the age keys of plan.Drop and with
// dataKey wrapped, first, for each recipient and key of the plan that does
// not hold it yet. A key's wrap is a remote call, under its own deadline,
// and draws on the request's unwrap budget.
func rewrapGroup(ctx context.Context, group sops.KeyGroup, dataKey []byte, plan RewrapPlan) (sops.KeyGroup, []string, []string, error) {
	var (
		out            sops.KeyGroup
		have           []string
		added, dropped []string
	)
	add, drop := plan.Add, plan.Drop
	held := func(w keysource.Wrapper) bool {
		for _, k := range group {
			if key := keyservice.KeyFromMasterKey(k); w.Matches(&key) {
				return true
			}
		}
		return false
	}
	for _, k := range group {
		if a, ok := k.(*sopsage.MasterKey); ok {
			if slices.Contains(drop, a.Recipient) && !slices.Contains(add, a.Recipient) {
				dropped = append(dropped, a.Recipient)
				continue
			}
			have = append(have, a.Recipient)
		}
		out = append(out, k)
	}
	var first sops.KeyGroup
	for _, r := range add {
		if slices.Contains(have, r) {
			continue
		}
		wrapped, err := keysource.SealAge(dataKey, r)
		if err != nil {
			return nil, nil, nil, fail(ReasonInternal, "wrapping the data key for "+r+" failed")
		}
		first = append(first, keys.MasterKey(&sopsage.MasterKey{Recipient: r, EncryptedKey: string(wrapped)}))
		have = append(have, r)
		added = append(added, r)
	}
	for _, w := range plan.Keys {
		if held(w) {
			continue
		}
		if err := keysource.Spend(ctx); err != nil {
			return nil, nil, nil, fail(ReasonTooMuchWork, err.Error())
		}
		mk, err := w.Wrap(ctx, dataKey)
		if err != nil {
			return nil, nil, nil, fail(ReasonUnavailable, fmt.Sprintf("wrapping the data key with key %q failed: %v", w.Name(), err))
		}
		first = append(first, mk)
		added = append(added, w.Name())
	}
	// sops tries a group's keys in order: the added ones go first, so the
	// current generation opens the file and the older one falls out of use.
	return append(first, out...), added, dropped, nil
}
