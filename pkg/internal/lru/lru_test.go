package lru

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestCache(t *testing.T) {
	now := time.Now()
	c := New[string, int](3, time.Minute, func() time.Time { return now })
	c.Put("a", 1, 1)
	c.Put("b", 2, 1)
	c.Put("c", 3, 1)
	_, _ = c.Get("a") // a is now the most recently used
	c.Put("d", 4, 1)  // evicts b
	_, ok := c.Get("b")
	assert.False(t, ok, "least recently used evicted")
	v, ok := c.Get("a")
	assert.True(t, ok)
	assert.Equal(t, 1, v)

	c.Put("big", 5, 4)
	_, ok = c.Get("big")
	assert.False(t, ok, "an entry over the whole bound is not kept")
	// Recency is now a, d, c (a was read last). An entry of cost 2 must
	// evict the two least recently used, c then d, and keep a.
	c.Put("two", 6, 2)
	for k, want := range map[string]bool{"two": true, "a": true, "c": false, "d": false} {
		_, ok := c.Get(k)
		assert.Equal(t, want, ok, "after the cost-2 put, %q kept: %v", k, want)
	}
	assert.Equal(t, 3, c.cost, "the cost is the sum of what is kept")

	now = now.Add(2 * time.Minute)
	_, ok = c.Get("a")
	assert.False(t, ok, "expired")

	var disabled *Cache[string, int] = New[string, int](0, time.Minute, nil)
	disabled.Put("x", 1, 1)
	_, ok = disabled.Get("x")
	assert.False(t, ok)
}
