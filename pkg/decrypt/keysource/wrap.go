package keysource

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/getsops/sops/v3/azkv"
	"github.com/getsops/sops/v3/gcpkms"
	"github.com/getsops/sops/v3/hcvault"
	"github.com/getsops/sops/v3/keys"
	"github.com/getsops/sops/v3/keyservice"
	sopskms "github.com/getsops/sops/v3/kms"
	vault "github.com/hashicorp/vault/api"
)

// Wrapper is a Source that can also wrap a data key for its key: a KMS or
// Vault key whose config names one key, not a glob of them. Wrap returns
// the sops master key that holds the wrapped data key, as `sops encrypt`
// writes it, made with the source's own identity and endpoint under
// CallTimeout. Errors name the operation and the service's status, never
// the data key.
type Wrapper interface {
	Source
	// Matches reports whether a master key names this source's key.
	Matches(key *keyservice.Key) bool
	Wrap(ctx context.Context, dataKey []byte) (keys.MasterKey, error)
}

// ErrNotOneKey is returned by Wrap when the source's config names a glob
// of keys: a data key is wrapped for one key only.
var ErrNotOneKey = errors.New("the config names a glob of keys, not one key")

// one returns the pattern as the one value it names, or ErrNotOneKey.
func (g glob) one() (string, error) {
	if strings.ContainsAny(string(g), `*?[\`) {
		return "", ErrNotOneKey
	}
	return string(g), nil
}

// OneKey returns nil if s can wrap a data key: it is a KMS or Vault source
// whose config names one key. Otherwise the error says why not;
// ErrNotOneKey for a glob.
func OneKey(s Source) error {
	var locator glob
	switch s := s.(type) {
	case *AWSKMS:
		locator = s.arns
	case *GCPKMS:
		locator = s.ids
	case *AzureKeyVault:
		locator = s.names
	case *Vault:
		locator = s.names
	default:
		return errors.New("only an awsKms, gcpKms, azureKeyVault or vaultTransit key can wrap a data key")
	}
	_, err := locator.one()
	return err
}

// Wrap encrypts dataKey with the configured key ARN, without an
// encryption context.
func (a *AWSKMS) Wrap(ctx context.Context, dataKey []byte) (keys.MasterKey, error) {
	arn, err := a.arns.one()
	if err != nil {
		return nil, err
	}
	region, err := arnRegion(arn)
	if err != nil {
		return nil, err
	}
	c, err := a.client(region)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	out, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(arn), Plaintext: dataKey})
	if err != nil {
		return nil, remoteError("aws kms encrypt", err)
	}
	return &sopskms.MasterKey{Arn: arn, EncryptedKey: base64.StdEncoding.EncodeToString(out.CiphertextBlob), CreationDate: time.Now().UTC()}, nil
}

// Wrap encrypts dataKey with the configured crypto key.
func (g *GCPKMS) Wrap(ctx context.Context, dataKey []byte) (keys.MasterKey, error) {
	id, err := g.ids.one()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	c, err := g.kmsClient()
	if err != nil {
		return nil, err
	}
	resp, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: id, Plaintext: dataKey})
	if err != nil {
		return nil, grpcError("gcp kms encrypt", err)
	}
	return &gcpkms.MasterKey{ResourceID: id, EncryptedKey: base64.StdEncoding.EncodeToString(resp.Ciphertext), CreationDate: time.Now().UTC()}, nil
}

// Wrap encrypts dataKey with the configured key's newest version,
// RSA-OAEP-256 as sops does, and records that version.
func (a *AzureKeyVault) Wrap(ctx context.Context, dataKey []byte) (keys.MasterKey, error) {
	name, err := a.names.one()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	c, err := a.keysClient()
	if err != nil {
		return nil, err
	}
	alg := azkeys.EncryptionAlgorithmRSAOAEP256
	resp, err := c.Encrypt(ctx, name, "", azkeys.KeyOperationParameters{Algorithm: &alg, Value: dataKey}, nil)
	if err != nil {
		return nil, azureError("azure key vault encrypt", err)
	}
	if resp.KID == nil || resp.KID.Version() == "" || !azureName.MatchString(resp.KID.Version()) {
		return nil, errors.New("azure key vault encrypt: the answer names no key version")
	}
	return &azkv.MasterKey{VaultURL: a.cfg.VaultURL, Name: name, Version: resp.KID.Version(),
		EncryptedKey: base64.RawURLEncoding.EncodeToString(resp.Result), CreationDate: time.Now().UTC()}, nil
}

// Wrap encrypts dataKey with the configured transit key, at the configured
// address.
func (v *Vault) Wrap(ctx context.Context, dataKey []byte) (keys.MasterKey, error) {
	name, err := v.names.one()
	if err != nil {
		return nil, err
	}
	body := map[string]any{"plaintext": base64.StdEncoding.EncodeToString(dataKey)}
	secret, err := v.transit(ctx, "encrypt", name, body)
	var re *vault.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusForbidden {
		v.forget()
		secret, err = v.transit(ctx, "encrypt", name, body)
	}
	if err != nil {
		return nil, vaultError("transit encrypt", err)
	}
	ct, ok := "", false
	if secret != nil && secret.Data != nil {
		ct, ok = secret.Data["ciphertext"].(string)
	}
	if !ok || !strings.HasPrefix(ct, "vault:") {
		return nil, fmt.Errorf("vault transit encrypt: no ciphertext in the response")
	}
	return &hcvault.MasterKey{VaultAddress: v.cfg.Address, EnginePath: v.cfg.EnginePath, KeyName: name, EncryptedKey: ct, CreationDate: time.Now().UTC()}, nil
}

// Wrapper returns the configured key name if it can wrap a data key.
func (r *Ring) Wrapper(name string) (Wrapper, bool) {
	for _, s := range r.sources {
		if s.Name() == name {
			w, ok := s.(Wrapper)
			return w, ok && OneKey(s) == nil
		}
	}
	return nil, false
}
