package decrypt

import (
	"container/list"
	"crypto/sha256"
	"sync"
	"time"
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
		if ttl > 0 && maxBytes > 0 {
			d.results = &resultCache{ttl: ttl, max: maxBytes, now: time.Now, order: list.New(), entries: map[[sha256.Size]byte]*list.Element{}}
		}
	}
}

// resultCache is a byte-bounded LRU with a TTL.
type resultCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	size    int
	now     func() time.Time
	order   *list.List
	entries map[[sha256.Size]byte]*list.Element
}

type resultEntry struct {
	key     [sha256.Size]byte
	value   any
	size    int
	expires time.Time
}

// resultKey hashes a kind of input with the input.
func resultKey(kind string, parts ...[]byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(kind))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write(p)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (c *resultCache) get(k [sha256.Size]byte) (any, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[k]
	if !ok {
		return nil, false
	}
	e := el.Value.(*resultEntry)
	if c.now().After(e.expires) {
		c.remove(el)
		return nil, false
	}
	c.order.MoveToFront(el)
	return e.value, true
}

func (c *resultCache) put(k [sha256.Size]byte, v any, size int) {
	if c == nil || size > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.remove(el)
	}
	c.entries[k] = c.order.PushFront(&resultEntry{key: k, value: v, size: size, expires: c.now().Add(c.ttl)})
	c.size += size
	for c.size > c.max {
		c.remove(c.order.Back())
	}
}

func (c *resultCache) remove(el *list.Element) {
	e := el.Value.(*resultEntry)
	c.order.Remove(el)
	delete(c.entries, e.key)
	c.size -= e.size
}
