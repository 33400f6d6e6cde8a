package decrypt

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/aes"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/internal/store"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// sopsVersion is the sops release this module is built with (go.mod), which
// a sealed document records as its writer, as sops does.
const sopsVersion = "3.13.3"

// MaxSealKeys caps the keys one sealed document is wrapped for.
const MaxSealKeys = 8

// Seal returns a new sops YAML document holding value under name, its data
// key wrapped by each of wrappers: a file `sops decrypt` opens with any of
// those keys, as `sops encrypt` would have written it. The webhook seals
// only its generated identities, for break-glass KMS keys. Errors name the
// key whose wrap failed, never the value or the data key.
func Seal(ctx context.Context, name, value string, wrappers []keysource.Wrapper) ([]byte, error) {
	if len(wrappers) == 0 || len(wrappers) > MaxSealKeys {
		return nil, fmt.Errorf("seal: between 1 and %d keys, not %d", MaxSealKeys, len(wrappers))
	}
	dataKey := make([]byte, store.DataKeySize)
	if _, err := rand.Read(dataKey); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	var group sops.KeyGroup
	for _, w := range wrappers {
		mk, err := w.Wrap(ctx, dataKey)
		if err != nil {
			return nil, fmt.Errorf("seal: wrapping the data key with key %q: %w", w.Name(), err)
		}
		group = append(group, mk)
	}
	tree := sops.Tree{
		Branches: sops.TreeBranches{sops.TreeBranch{sops.TreeItem{Key: name, Value: value}}},
		Metadata: sops.Metadata{KeyGroups: []sops.KeyGroup{group}, UnencryptedSuffix: "_unencrypted", Version: sopsVersion},
	}
	cipher := aes.NewCipher()
	mac, err := tree.Encrypt(dataKey, cipher)
	if err != nil {
		return nil, errors.New("seal: encrypting the value failed")
	}
	tree.Metadata.LastModified = time.Now().UTC()
	if tree.Metadata.MessageAuthenticationCode, err = cipher.Encrypt(mac, dataKey, tree.Metadata.LastModified.Format(time.RFC3339)); err != nil {
		return nil, errors.New("seal: encrypting the MAC failed")
	}
	out, err := stores[FormatYAML].EmitEncrypted(tree)
	if err != nil {
		return nil, errors.New("seal: the document cannot be written")
	}
	return out, nil
}
