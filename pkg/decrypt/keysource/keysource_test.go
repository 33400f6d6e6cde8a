package keysource_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

var dataKey = bytes.Repeat([]byte{0x42}, 32)

func ageKeyFile(t *testing.T) (string, *age.X25519Identity) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	p := filepath.Join(t.TempDir(), "k.agekey")
	require.NoError(t, os.WriteFile(p, []byte("# created: test\n"+id.String()+"\n"), 0o600))
	return p, id
}

func wrapAge(t *testing.T, r age.Recipient) []byte {
	t.Helper()
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, r)
	require.NoError(t, err)
	_, err = w.Write(dataKey)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, aw.Close())
	return buf.Bytes()
}

func ageReq(ciphertext []byte, claimedRecipient string) *keyservice.DecryptRequest {
	return &keyservice.DecryptRequest{
		Key:        &keyservice.Key{KeyType: &keyservice.Key_AgeKey{AgeKey: &keyservice.AgeKey{Recipient: claimedRecipient}}},
		Ciphertext: ciphertext,
	}
}

func TestNewRing(t *testing.T) {
	_, err := keysource.NewRing()
	require.ErrorContains(t, err, "no keys configured")

	p, _ := ageKeyFile(t)
	a, err := keysource.LoadAge("a", p)
	require.NoError(t, err)
	_, err = keysource.NewRing(a, a)
	require.ErrorContains(t, err, `"a" is used twice`)
}

func TestClientRecordsTheKeyThatUnwrapped(t *testing.T) {
	pa, _ := ageKeyFile(t)
	pb, idB := ageKeyFile(t)
	a, err := keysource.LoadAge("team-a", pa)
	require.NoError(t, err)
	b, err := keysource.LoadAge("team-b", pb)
	require.NoError(t, err)
	ring, err := keysource.NewRing(a, b)
	require.NoError(t, err)

	c := ring.Client(context.Background(), nil)
	resp, err := c.Decrypt(context.Background(), ageReq(wrapAge(t, idB.Recipient()), idB.Recipient().String()))
	require.NoError(t, err)
	assert.Equal(t, dataKey, resp.Plaintext)
	assert.Equal(t, []string{"team-b"}, c.Used())

	// A key is only tried for payloads whose metadata names it: one that
	// claims a stranger's recipient is not opened, even by the identity
	// its stanza is for, so a payload cannot make every key work.
	c = ring.Client(context.Background(), nil)
	_, err = c.Decrypt(context.Background(), ageReq(wrapAge(t, idB.Recipient()), "age1claimed"))
	require.ErrorIs(t, err, keysource.ErrNoKey)
	assert.Empty(t, c.Used())
}

// A generated key's generations are one key for the policy, and the one
// that opened a data key is named in what the Client reports as used.
func TestClientNamesTheGenerationThatUnwrapped(t *testing.T) {
	var gens []keysource.AgeGeneration
	var ids []*age.X25519Identity
	for n := 1; n <= 3; n++ {
		id, err := age.GenerateX25519Identity()
		require.NoError(t, err)
		ids = append(ids, id)
		gens = append(gens, keysource.AgeGeneration{Number: n, Identity: id})
	}
	ring, err := keysource.NewRing(keysource.NewAgeGenerations("cluster", gens))
	require.NoError(t, err)
	for n, id := range ids {
		c := ring.Client(context.Background(), nil)
		resp, err := c.Decrypt(context.Background(), ageReq(wrapAge(t, id.Recipient()), id.Recipient().String()))
		require.NoError(t, err)
		assert.Equal(t, dataKey, resp.Plaintext)
		used := c.Used()
		assert.Equal(t, []string{fmt.Sprintf("cluster@%d", n+1)}, used)
		assert.Equal(t, "cluster", keysource.KeyName(used[0]))
	}
	assert.Equal(t, "team-a", keysource.KeyName("team-a"))
	typ, recipients := ring.Recipients("cluster")
	assert.Equal(t, "age", typ)
	assert.Len(t, recipients, 3)
}

// A retired generation never opens a data key; a payload for it is
// recognised, so the refusal can say why, and counted.
func TestClientRecognisesRetiredGenerations(t *testing.T) {
	old, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	cur, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	type use struct {
		gen     int
		retired bool
	}
	var uses []use
	ring, err := keysource.NewRingWith([]keysource.Source{keysource.NewAgeGenerations("cluster", []keysource.AgeGeneration{
		{Number: 2, Identity: cur}, {Number: 1, Identity: old, Retired: true},
	})}, []keysource.RingOption{keysource.WithStats(keysource.Stats{Generation: func(_ string, n int, retired bool) { uses = append(uses, use{n, retired}) }})})
	require.NoError(t, err)

	c := ring.Client(context.Background(), nil)
	_, err = c.Decrypt(context.Background(), ageReq(wrapAge(t, old.Recipient()), old.Recipient().String()))
	require.ErrorIs(t, err, keysource.ErrNoKey)
	require.Len(t, c.Retired(), 1)
	assert.Contains(t, c.Retired()[0].Error(), `key "cluster" generation 1 is retired`)

	c = ring.Client(context.Background(), nil)
	_, err = c.Decrypt(context.Background(), ageReq(wrapAge(t, cur.Recipient()), cur.Recipient().String()))
	require.NoError(t, err)
	assert.Empty(t, c.Retired())
	assert.Equal(t, []use{{1, true}, {2, false}}, uses)
}

// opensAll is a source that is not a Matcher (as a KMS key): it is asked
// for any wrapped key, and opens every one.
type opensAll string

func (o opensAll) Name() string { return string(o) }
func (o opensAll) Unwrap(context.Context, *keyservice.Key, []byte) ([]byte, error) {
	return dataKey, nil
}

// The Ring asks only the age and PGP keys a payload names, through its
// index, and every source that is not indexed, in config order.
func TestRingAsksInConfigOrder(t *testing.T) {
	_, id := ageKeyFile(t)
	a := keysource.NewAgeGenerations("age", []keysource.AgeGeneration{{Number: 1, Identity: id}})
	for _, tt := range []struct {
		name    string
		sources []keysource.Source
		want    string
	}{
		{"the unindexed source first", []keysource.Source{opensAll("kms"), a}, "kms"},
		{"the age key first", []keysource.Source{a, opensAll("kms")}, "age@1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ring, err := keysource.NewRing(tt.sources...)
			require.NoError(t, err)
			c := ring.Client(context.Background(), nil)
			_, err = c.Decrypt(context.Background(), ageReq(wrapAge(t, id.Recipient()), id.Recipient().String()))
			require.NoError(t, err)
			assert.Equal(t, []string{tt.want}, c.Used())
		})
	}
}

func TestClientRefusesWhatItDoesNotHold(t *testing.T) {
	p, _ := ageKeyFile(t)
	a, err := keysource.LoadAge("a", p)
	require.NoError(t, err)
	ring, err := keysource.NewRing(a)
	require.NoError(t, err)
	stranger, err := age.GenerateX25519Identity()
	require.NoError(t, err)

	tests := []struct {
		name string
		req  *keyservice.DecryptRequest
		want error
	}{
		{"age key of a stranger", ageReq(wrapAge(t, stranger.Recipient()), ""), keysource.ErrNoKey},
		{"vault key naming an address is never contacted", &keyservice.DecryptRequest{
			Key:        &keyservice.Key{KeyType: &keyservice.Key_VaultKey{VaultKey: &keyservice.VaultKey{VaultAddress: "http://127.0.0.1:1", EnginePath: "transit", KeyName: "k"}}},
			Ciphertext: []byte("vault:v1:x"),
		}, keysource.ErrNoKey},
		{"aws kms key with a role is never contacted", &keyservice.DecryptRequest{
			Key:        &keyservice.Key{KeyType: &keyservice.Key_KmsKey{KmsKey: &keyservice.KmsKey{Arn: "arn:aws:kms:eu-west-1:1:key/x", Role: "arn:aws:iam::1:role/admin"}}},
			Ciphertext: []byte("x"),
		}, keysource.ErrNoKey},
		{"no key at all", &keyservice.DecryptRequest{Ciphertext: []byte("x")}, keysource.ErrNoKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ring.Client(context.Background(), nil)
			_, err := c.Decrypt(context.Background(), tt.req)
			assert.True(t, errors.Is(err, tt.want), "got %v", err)
			assert.Empty(t, c.Used())
		})
	}

	t.Run("oversized wrapped key", func(t *testing.T) {
		_, err := ring.Client(context.Background(), nil).Decrypt(context.Background(), ageReq(make([]byte, keysource.MaxWrappedKeySize+1), ""))
		assert.ErrorContains(t, err, "larger than")
	})
	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := ring.Client(ctx, nil).Decrypt(context.Background(), ageReq(wrapAge(t, stranger.Recipient()), ""))
		assert.ErrorIs(t, err, context.Canceled)
	})
}

func TestParsePGPKeyring(t *testing.T) {
	e, err := openpgp.NewEntity("t", "", "t@example.invalid", nil)
	require.NoError(t, err)
	armored := func(f func(w *bytes.Buffer) error, kind string) []byte {
		var buf bytes.Buffer
		w, err := pgparmor.Encode(&buf, kind, nil)
		require.NoError(t, err)
		var inner bytes.Buffer
		require.NoError(t, f(&inner))
		_, err = w.Write(inner.Bytes())
		require.NoError(t, err)
		require.NoError(t, w.Close())
		return buf.Bytes()
	}
	private := armored(func(w *bytes.Buffer) error { return e.SerializePrivate(w, nil) }, openpgp.PrivateKeyType)
	public := armored(func(w *bytes.Buffer) error { return e.Serialize(w) }, openpgp.PublicKeyType)

	_, err = keysource.ParsePGPKeyring(private)
	require.NoError(t, err)
	_, err = keysource.ParsePGPKeyring(public)
	require.ErrorContains(t, err, "no private key")
	_, err = keysource.ParsePGPKeyring([]byte("garbage"))
	require.ErrorContains(t, err, "not an OpenPGP key")

	require.NoError(t, e.PrivateKey.Encrypt([]byte("passphrase")))
	for _, sk := range e.Subkeys {
		require.NoError(t, sk.PrivateKey.Encrypt([]byte("passphrase")))
	}
	protected := armored(func(w *bytes.Buffer) error { return e.SerializePrivateWithoutSigning(w, nil) }, openpgp.PrivateKeyType)
	_, err = keysource.ParsePGPKeyring(protected)
	require.ErrorContains(t, err, "passphrase-protected")
}
