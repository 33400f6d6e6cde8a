// Package lazyctx is context.WithTimeout whose timer starts only when
// something waits. Starting a timer in the Go runtime wakes a thread of its
// network poller; on a request the webhook answers from its caches, which
// waits on nothing, that wake-up cost more CPU than the handler's own work.
package lazyctx

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// WithTimeout returns a copy of parent that is done timeout from now, as
// context.WithTimeout's is, but that starts its timer only when something
// first asks for its Done channel (context.WithTimeout and WithDeadline on
// it ask, and so does a select on it). Err, Value and Deadline answer as
// context.WithTimeout's would without starting it. The returned cancel
// releases the timer, if one started, and makes the context done.
func WithTimeout(parent context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(timeout)
	if d, ok := parent.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c := &lazyDeadline{parent: parent, deadline: deadline}
	return c, c.stop
}

// lazyDeadline is WithTimeout's context. Until started it answers from
// its parent and the clock; once started, from timed, a
// context.WithDeadline of the parent.
type lazyDeadline struct {
	parent   context.Context
	deadline time.Time

	once    sync.Once
	started atomic.Bool // timed and cancel are set
	timed   context.Context
	cancel  context.CancelFunc
}

// start makes the timed context if it is not made yet, and returns it.
func (c *lazyDeadline) start() context.Context {
	c.once.Do(func() {
		c.timed, c.cancel = context.WithDeadline(c.parent, c.deadline)
		c.started.Store(true)
	})
	return c.timed
}

// current is the context that answers now: the timed one once it is made,
// or made now because the deadline has passed (it is then done at once,
// without a timer), else the parent, which alone can have ended it.
func (c *lazyDeadline) current() context.Context {
	if c.started.Load() || !time.Now().Before(c.deadline) {
		return c.start()
	}
	return c.parent
}

func (c *lazyDeadline) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *lazyDeadline) Done() <-chan struct{}       { return c.start().Done() }
func (c *lazyDeadline) Err() error                  { return c.current().Err() }
func (c *lazyDeadline) Value(key any) any           { return c.current().Value(key) }

// stop cancels the context, making it done; a timer it started is released.
// One never started is cancelled apart from its parent (WithoutCancel keeps
// the parent's values): deriving it from the parent would ask the parent
// for Done, which starts the parent's timer when that is lazy too.
func (c *lazyDeadline) stop() {
	c.once.Do(func() {
		c.timed, c.cancel = context.WithCancel(context.WithoutCancel(c.parent))
		c.started.Store(true)
	})
	c.cancel()
}
