package keysource

import (
	"container/list"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/getsops/sops/v3/keyservice"
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
	h := sha256.New()
	h.Write([]byte(source))
	h.Write([]byte{0})
	h.Write([]byte(keyKind(key)))
	h.Write([]byte{0})
	h.Write(ciphertext)
	var k cacheKey
	h.Sum(k[:0])
	return k
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

// dataKeyCache is a bounded LRU of unwrapped data keys with a TTL, in memory
// only. A nil cache caches nothing.
type dataKeyCache struct {
	mu      sync.Mutex
	size    int
	ttl     time.Duration
	now     func() time.Time
	order   *list.List // front: most recently used
	entries map[cacheKey]*list.Element
}

type cacheEntry struct {
	key     cacheKey
	dataKey []byte
	expires time.Time
}

func newDataKeyCache(size int, ttl time.Duration, now func() time.Time) *dataKeyCache {
	if size <= 0 || ttl <= 0 {
		return nil
	}
	return &dataKeyCache{size: size, ttl: ttl, now: now, order: list.New(), entries: map[cacheKey]*list.Element{}}
}

func (c *dataKeyCache) get(k cacheKey) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[k]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if c.now().After(e.expires) {
		c.order.Remove(el)
		delete(c.entries, k)
		return nil, false
	}
	c.order.MoveToFront(el)
	return append([]byte(nil), e.dataKey...), true
}

func (c *dataKeyCache) put(k cacheKey, dataKey []byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.order.Remove(el)
	}
	e := &cacheEntry{key: k, dataKey: append([]byte(nil), dataKey...), expires: c.now().Add(c.ttl)}
	c.entries[k] = c.order.PushFront(e)
	for c.order.Len() > c.size {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.entries, last.Value.(*cacheEntry).key)
	}
}
