// Package ctxtest holds a context for tests that shows whether code started
// a timer on it: context.WithTimeout and context.WithDeadline ask their
// parent for Done, and nothing else on the paths the tests watch does.
package ctxtest

import (
	"context"
	"sync/atomic"
)

// DoneCounter is a context that counts the calls to its Done.
type DoneCounter struct {
	context.Context
	asked atomic.Int64
}

// Done counts the call and returns the embedded context's Done.
func (c *DoneCounter) Done() <-chan struct{} {
	c.asked.Add(1)
	return c.Context.Done()
}

// Asked returns how many times Done was called.
func (c *DoneCounter) Asked() int64 { return c.asked.Load() }
