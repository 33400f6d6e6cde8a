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
	c.Put("two", 6, 2) // evicts c and d (a was used later than both? a, d, c order: two needs 2)
	assert.LessOrEqual(t, c.cost, 3)

	now = now.Add(2 * time.Minute)
	_, ok = c.Get("a")
	assert.False(t, ok, "expired")

	var disabled *Cache[string, int] = New[string, int](0, time.Minute, nil)
	disabled.Put("x", 1, 1)
	_, ok = disabled.Get("x")
	assert.False(t, ok)
}
