package decrypt

import (
	"crypto/sha256"
	"time"

	"github.com/sops-webhook/sops-webhook/pkg/internal/lru"
)

// DefaultResultCacheBytes bounds the memory the result cache may hold:
// decrypted documents and parsed values indexes.
const DefaultResultCacheBytes = 32 << 20

// Option configures a Decryptor.
type Option func(*Decryptor)

// WithResultCache keeps decrypted documents and parsed values indexes in
// memory for ttl, up to maxBytes, keyed by a hash of the exact input. A
// cached document is returned only if the request's access still allows
// every key that opened it; otherwise it is decrypted again, which applies
// the policy in full. ttl or maxBytes 0 disables it.
func WithResultCache(ttl time.Duration, maxBytes int) Option {
	return func(d *Decryptor) {
		d.results = lru.New[[sha256.Size]byte, any](maxBytes, ttl, nil)
	}
}

// resultCache holds decrypted documents, parsed indexes and decrypted values
// payloads, costed by their size in bytes.
type resultCache = lru.Cache[[sha256.Size]byte, any]

// resultKey hashes a kind of input with the input (lru.Key).
func resultKey(kind string, parts ...[]byte) [sha256.Size]byte {
	return lru.Key(append([][]byte{[]byte(kind)}, parts...)...)
}
