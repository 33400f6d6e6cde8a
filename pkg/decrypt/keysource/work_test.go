package keysource_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/ProtonMail/go-crypto/openpgp"
	pgparmor "github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/getsops/sops/v3/keyservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// countingAge is an age source that counts the unwraps it runs; it stays a
// local source.
type countingAge struct {
	*keysource.Age
	n atomic.Int64
}

func (c *countingAge) Unwrap(ctx context.Context, k *keyservice.Key, ct []byte) ([]byte, error) {
	c.n.Add(1)
	return c.Age.Unwrap(ctx, k, ct)
}

// garbage is an armored age file for a stranger, distinct each time: sent
// with metadata that names our recipient, it is what a payload built to
// make the webhook work carries.
func garbage(t *testing.T) []byte {
	t.Helper()
	other, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	return wrapAge(t, other.Recipient())
}

// TestRequestBudget sends one request's worth of unwraps that fail, each a
// distinct payload naming our recipient: the source runs
// MaxFailedUnwrapsPerRequest of them and the rest are refused with
// ErrTooManyUnwraps without work; another request has a budget of its own,
// and the failures already met are remembered instead of run again.
func TestRequestBudget(t *testing.T) {
	p, id := ageKeyFile(t)
	a, err := keysource.LoadAge("a", p)
	require.NoError(t, err)
	src := &countingAge{Age: a}
	ring, err := keysource.NewRing(src)
	require.NoError(t, err)
	var _ keysource.Local = src

	payloads := make([][]byte, 3*keysource.MaxFailedUnwrapsPerRequest)
	for i := range payloads {
		payloads[i] = garbage(t)
	}
	ctx := keysource.WithRequestBudget(context.Background())
	var refused int
	for _, ct := range payloads {
		_, err := ring.Client(ctx, nil).Decrypt(ctx, ageReq(ct, id.Recipient().String()))
		require.Error(t, err)
		if assert.NotContains(t, err.Error(), "AGE-SECRET") && errorsIsTooMany(err) {
			refused++
		}
	}
	assert.EqualValues(t, keysource.MaxFailedUnwrapsPerRequest, src.n.Load(), "unwraps run for one request")
	assert.Equal(t, len(payloads)-keysource.MaxFailedUnwrapsPerRequest, refused)

	// A second request: the failures met are remembered, and count.
	ctx = keysource.WithRequestBudget(context.Background())
	for _, ct := range payloads[:keysource.MaxFailedUnwrapsPerRequest] {
		_, err := ring.Client(ctx, nil).Decrypt(ctx, ageReq(ct, id.Recipient().String()))
		require.Error(t, err)
	}
	assert.EqualValues(t, keysource.MaxFailedUnwrapsPerRequest, src.n.Load(), "a remembered failure runs no unwrap")
	_, err = ring.Client(ctx, nil).Decrypt(ctx, ageReq(wrapAge(t, id.Recipient()), id.Recipient().String()))
	assert.True(t, errorsIsTooMany(err), "the remembered failures spent this request's budget: %v", err)

	// A good payload in a fresh request opens.
	ctx = keysource.WithRequestBudget(context.Background())
	resp, err := ring.Client(ctx, nil).Decrypt(ctx, ageReq(wrapAge(t, id.Recipient()), id.Recipient().String()))
	require.NoError(t, err)
	assert.Equal(t, dataKey, resp.Plaintext)
}

func errorsIsTooMany(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte(keysource.ErrTooManyUnwraps.Error()))
}

// TestAgeStanzaCap wraps a data key for more recipients than
// MaxAgeStanzas, ours among them: refused before any stanza is tried.
func TestAgeStanzaCap(t *testing.T) {
	p, id := ageKeyFile(t)
	a, err := keysource.LoadAge("a", p)
	require.NoError(t, err)
	for _, n := range []int{keysource.MaxAgeStanzas, keysource.MaxAgeStanzas + 1} {
		t.Run(fmt.Sprintf("%d stanzas", n), func(t *testing.T) {
			recipients := []age.Recipient{id.Recipient()}
			for len(recipients) < n {
				other, err := age.GenerateX25519Identity()
				require.NoError(t, err)
				recipients = append(recipients, other.Recipient())
			}
			var buf bytes.Buffer
			aw := armor.NewWriter(&buf)
			w, err := age.Encrypt(aw, recipients...)
			require.NoError(t, err)
			_, err = w.Write(dataKey)
			require.NoError(t, err)
			require.NoError(t, w.Close())
			require.NoError(t, aw.Close())
			plain, err := a.Unwrap(context.Background(), ageReq(nil, "").Key, buf.Bytes())
			if n <= keysource.MaxAgeStanzas {
				require.NoError(t, err)
				assert.Equal(t, dataKey, plain)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), fmt.Sprintf("more than %d recipient stanzas", keysource.MaxAgeStanzas))
		})
	}
}

// TestPGPKeyPacketCap wraps a data key for more OpenPGP keys than
// MaxPGPKeyPackets, ours among them: refused before any packet is tried.
func TestPGPKeyPacketCap(t *testing.T) {
	ours, err := openpgp.NewEntity("ours", "", "ours@example.com", nil)
	require.NoError(t, err)
	var priv bytes.Buffer
	w, err := pgparmor.Encode(&priv, openpgp.PrivateKeyType, nil)
	require.NoError(t, err)
	require.NoError(t, ours.SerializePrivate(w, nil))
	require.NoError(t, w.Close())
	path := filepath.Join(t.TempDir(), "k.asc")
	require.NoError(t, os.WriteFile(path, priv.Bytes(), 0o600))
	p, err := keysource.LoadPGP("p", path)
	require.NoError(t, err)
	key := &keyservice.Key{KeyType: &keyservice.Key_PgpKey{PgpKey: &keyservice.PgpKey{Fingerprint: fmt.Sprintf("%X", ours.PrimaryKey.Fingerprint)}}}
	for _, n := range []int{keysource.MaxPGPKeyPackets, keysource.MaxPGPKeyPackets + 1} {
		t.Run(fmt.Sprintf("%d packets", n), func(t *testing.T) {
			to := []*openpgp.Entity{ours}
			for len(to) < n {
				e, err := openpgp.NewEntity("other", "", "other@example.com", nil)
				require.NoError(t, err)
				to = append(to, e)
			}
			var msg bytes.Buffer
			aw, err := pgparmor.Encode(&msg, "PGP MESSAGE", nil)
			require.NoError(t, err)
			pw, err := openpgp.Encrypt(aw, to, nil, nil, nil)
			require.NoError(t, err)
			_, err = pw.Write(dataKey)
			require.NoError(t, err)
			require.NoError(t, pw.Close())
			require.NoError(t, aw.Close())
			plain, err := p.Unwrap(context.Background(), key, msg.Bytes())
			if n <= keysource.MaxPGPKeyPackets {
				require.NoError(t, err)
				assert.Equal(t, dataKey, plain)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), fmt.Sprintf("more than %d encrypted-key packets", keysource.MaxPGPKeyPackets))
		})
	}
}
