package keysource_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/getsops/sops/v3/keyservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// counting wraps a Source and counts its unwraps.
type counting struct {
	keysource.Source
	n atomic.Int64
}

func (c *counting) Unwrap(ctx context.Context, k *keyservice.Key, ct []byte) ([]byte, error) {
	c.n.Add(1)
	return c.Source.Unwrap(ctx, k, ct)
}

// Matches forwards to the wrapped Source, which is an *Age.
func (c *counting) Matches(k *keyservice.Key) bool { return c.Source.(keysource.Matcher).Matches(k) }

// only allows the named keys.
type only []string

func (o only) Allowed(_ context.Context, name string) error {
	for _, n := range o {
		if n == name {
			return nil
		}
	}
	return fmt.Errorf("key %q is not granted to this test: %w", name, keysource.ErrNotGranted)
}

func loadCounting(t *testing.T, name string) (*counting, string) {
	t.Helper()
	p, id := ageKeyFile(t)
	a, err := keysource.LoadAge(name, p)
	require.NoError(t, err)
	return &counting{Source: a}, id.Recipient().String()
}

func TestAccessIsCheckedBeforeAnyUnwrap(t *testing.T) {
	a, ra := loadCounting(t, "team-a")
	b, _ := loadCounting(t, "team-b")
	ring, err := keysource.NewRing(a, b)
	require.NoError(t, err)
	ctA := wrapAgeTo(t, ra)

	c := ring.Client(context.Background(), only{"team-b"})
	_, err = c.Decrypt(context.Background(), ageReq(ctA, ra))
	require.ErrorIs(t, err, keysource.ErrNoKey)
	assert.Zero(t, a.n.Load(), "a key that is not granted is never asked")
	require.Len(t, c.Denied(), 1, "the denial is explained: the metadata names team-a")
	assert.ErrorIs(t, c.Denied()[0], keysource.ErrNotGranted)
	assert.Contains(t, c.Denied()[0].Error(), `"team-a"`)

	c = ring.Client(context.Background(), only{"team-a"})
	resp, err := c.Decrypt(context.Background(), ageReq(ctA, ra))
	require.NoError(t, err)
	assert.Equal(t, dataKey, resp.Plaintext)
	assert.Equal(t, []string{"team-a"}, c.Used())
	assert.Empty(t, c.Denied())
}

func TestDeniedKeysThatTheMetadataDoesNotNameAreNotReported(t *testing.T) {
	a, ra := loadCounting(t, "team-a")
	b, _ := loadCounting(t, "team-b")
	ring, err := keysource.NewRing(a, b)
	require.NoError(t, err)
	c := ring.Client(context.Background(), only{"team-a"})
	_, err = c.Decrypt(context.Background(), ageReq(wrapAgeTo(t, ra), ra))
	require.NoError(t, err)
	assert.Empty(t, c.Denied(), "team-b was denied, but the payload was not for it")
}

func TestCacheAfterAccess(t *testing.T) {
	a, ra := loadCounting(t, "team-a")
	now := time.Now()
	var hits, misses atomic.Int64
	ring, err := keysource.NewRingWith([]keysource.Source{a}, []keysource.RingOption{
		keysource.WithCache(2, time.Minute, func() time.Time { return now }),
		keysource.WithStats(keysource.Stats{CacheLookup: func(hit bool) {
			if hit {
				hits.Add(1)
			} else {
				misses.Add(1)
			}
		}}),
	})
	require.NoError(t, err)
	ct := wrapAgeTo(t, ra)
	decrypt := func(access keysource.Access) error {
		_, err := ring.Client(context.Background(), access).Decrypt(context.Background(), ageReq(ct, ra))
		return err
	}

	for range 100 {
		require.NoError(t, decrypt(nil))
	}
	assert.EqualValues(t, 1, a.n.Load(), "100 decryptions of one wrapped key: one unwrap")
	assert.EqualValues(t, 99, hits.Load())

	require.ErrorIs(t, decrypt(only{}), keysource.ErrNoKey, "a cached key is still subject to access")
	assert.EqualValues(t, 99, hits.Load(), "the cache is not consulted for a denied key")

	now = now.Add(2 * time.Minute)
	require.NoError(t, decrypt(nil))
	assert.EqualValues(t, 2, a.n.Load(), "expired entries are unwrapped again")

	// The cache is bounded: two other wrapped keys evict the first.
	for range 2 {
		other := wrapAgeTo(t, ra)
		_, err := ring.Client(context.Background(), nil).Decrypt(context.Background(), ageReq(other, ra))
		require.NoError(t, err)
	}
	require.NoError(t, decrypt(nil))
	assert.EqualValues(t, 5, a.n.Load(), "evicted, unwrapped again")
}

func TestNoCacheByDefault(t *testing.T) {
	a, ra := loadCounting(t, "team-a")
	ring, err := keysource.NewRing(a)
	require.NoError(t, err)
	ct := wrapAgeTo(t, ra)
	for range 3 {
		_, err := ring.Client(context.Background(), nil).Decrypt(context.Background(), ageReq(ct, ra))
		require.NoError(t, err)
	}
	assert.EqualValues(t, 3, a.n.Load())
}

// wrapAgeTo wraps the test data key for an age recipient string.
func wrapAgeTo(t *testing.T, recipient string) []byte {
	t.Helper()
	r, err := age.ParseX25519Recipient(recipient)
	require.NoError(t, err)
	return wrapAge(t, r)
}
