package keysource

import (
	"crypto/sha256"
	"time"

	"github.com/getsops/sops/v3/keyservice"

	"github.com/sops-webhook/sops-webhook/pkg/internal/lru"
)

// DefaultCacheSize and DefaultCacheTTL bound the data-key cache: a values
// file's data key is unwrapped once per TTL however many objects use it.
const (
	DefaultCacheSize = 1024
	DefaultCacheTTL  = 5 * time.Minute
)

// cacheKey identifies an unwrap: which configured key, which kind of master
// key, and the wrapped data key itself (hashed).
type cacheKey [sha256.Size]byte

func newCacheKey(source string, key *keyservice.Key, ciphertext []byte) cacheKey {
	return lru.Key([]byte("data key"), []byte(source), []byte(keyKind(key)), ciphertext)
}

func keyKind(key *keyservice.Key) string {
	switch {
	case key.GetAgeKey() != nil:
		return "age"
	case key.GetPgpKey() != nil:
		return "pgp"
	case key.GetKmsKey() != nil:
		return "awskms"
	case key.GetGcpKmsKey() != nil:
		return "gcpkms"
	case key.GetAzureKeyvaultKey() != nil:
		return "azkv"
	case key.GetVaultKey() != nil:
		return "vault"
	}
	return "other"
}

// dataKeyCache holds unwrapped data keys, one cost unit each: at most size
// of them, each for the TTL. A nil cache caches nothing.
type dataKeyCache = lru.Cache[cacheKey, []byte]

func newDataKeyCache(size int, ttl time.Duration, now func() time.Time) *dataKeyCache {
	return lru.New[cacheKey, []byte](size, ttl, now)
}
