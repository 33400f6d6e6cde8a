// Package lru is the in-memory cache behind the data-key cache, the result
// cache and the policy's caches, with the one scheme of their keys (Key): least recently used entries go first once the total cost
// passes a bound, and every entry expires after a TTL. It never touches
// disk. A nil *Cache caches nothing.
package lru

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"
)

// Cache is safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu      sync.Mutex
	maxCost int
	cost    int
	ttl     time.Duration
	now     func() time.Time
	order   *list.List // front: most recently used
	entries map[K]*list.Element
}

type entry[K comparable, V any] struct {
	key     K
	value   V
	cost    int
	expires time.Time
}

// New returns a cache holding entries for ttl, up to a total cost of
// maxCost; nil when either is not positive. now is the clock (nil:
// time.Now).
func New[K comparable, V any](maxCost int, ttl time.Duration, now func() time.Time) *Cache[K, V] {
	if maxCost <= 0 || ttl <= 0 {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	return &Cache[K, V]{maxCost: maxCost, ttl: ttl, now: now, order: list.New(), entries: map[K]*list.Element{}}
}

// Get returns the live entry for k.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	var zero V
	if c == nil {
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[k]
	if !ok {
		return zero, false
	}
	e := el.Value.(*entry[K, V])
	if c.now().After(e.expires) {
		c.remove(el)
		return zero, false
	}
	c.order.MoveToFront(el)
	return e.value, true
}

// Put stores v under k at cost, evicting the least recently used entries
// past the bound. An entry costing more than the whole bound is not kept.
func (c *Cache[K, V]) Put(k K, v V, cost int) {
	if c == nil || cost > c.maxCost {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.remove(el)
	}
	c.entries[k] = c.order.PushFront(&entry[K, V]{key: k, value: v, cost: cost, expires: c.now().Add(c.ttl)})
	c.cost += cost
	for c.cost > c.maxCost {
		c.remove(c.order.Back())
	}
}

func (c *Cache[K, V]) remove(el *list.Element) {
	e := el.Value.(*entry[K, V])
	c.order.Remove(el)
	delete(c.entries, e.key)
	c.cost -= e.cost
}

// Key is the one cache-key scheme: a SHA-256 over the parts, each prefixed
// with its length, so no two different lists of parts share a key. The
// first part names the kind of entry, so caches of different kinds never
// collide.
func Key(parts ...[]byte) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// KeyOf is Key over strings.
func KeyOf(parts ...string) [sha256.Size]byte {
	b := make([][]byte, len(parts))
	for i, p := range parts {
		b[i] = []byte(p)
	}
	return Key(b...)
}
