package budget

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/sops-webhook/sops-webhook/pkg/internal/lazyctx"
)

// BusyError is returned when work is not admitted in time. It is the
// server's condition, not the request's: the same request can pass later.
type BusyError struct {
	// Doing is what the busy lanes do, such as "decrypting".
	Doing string
	// InFlight is how many bytes of work were admitted when the request gave
	// up waiting.
	InFlight int64
	// Weight is the refused request's weight.
	Weight int64
	// Lane names the lane that refused it.
	Lane string
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("the webhook is busy %s %s", e.Doing, MiB(e.InFlight))
}

// MiB formats n bytes for a message, in MiB with one decimal.
func MiB(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// Lane admits work by weight up to a capacity in bytes and, optionally, a
// number of admissions at once. It is safe for concurrent use.
type Lane struct {
	name     string
	doing    string
	capacity int64
	bytes    *semaphore.Weighted
	slots    *semaphore.Weighted // nil: no cap on admissions
	wait     time.Duration

	inFlight atomic.Int64
	refused  atomic.Int64
}

// NewLane returns a lane named name that admits up to capacity bytes, and at
// most slots admissions at once (0: no such cap), each waiting at most wait.
// doing describes the work in a BusyError ("decrypting").
func NewLane(name, doing string, capacity int64, slots int, wait time.Duration) *Lane {
	l := &Lane{name: name, doing: doing, capacity: max(capacity, 1), wait: wait}
	l.bytes = semaphore.NewWeighted(l.capacity)
	if slots > 0 {
		l.slots = semaphore.NewWeighted(int64(slots))
	}
	return l
}

// Acquire admits weight bytes of work, at once when the lane has room and
// no one waits before it, else waiting at most the lane's wait and never
// past ctx's deadline, and returns the function that gives them back. A
// weight above the lane's capacity is admitted as the whole capacity: it
// runs alone rather than never. The error is always a *BusyError.
func (l *Lane) Acquire(ctx context.Context, weight int64) (release func(), err error) {
	w := min(max(weight, 1), l.capacity)
	// One wait for both steps; its timer starts only if a step waits.
	ctx, cancel := lazyctx.WithTimeout(ctx, l.wait)
	defer cancel()
	if l.slots != nil {
		if !l.slots.TryAcquire(1) && l.slots.Acquire(ctx, 1) != nil {
			return nil, l.busy(weight)
		}
	}
	if !l.bytes.TryAcquire(w) && l.bytes.Acquire(ctx, w) != nil {
		if l.slots != nil {
			l.slots.Release(1)
		}
		return nil, l.busy(weight)
	}
	l.inFlight.Add(w)
	var once atomic.Bool
	return func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		l.inFlight.Add(-w)
		l.bytes.Release(w)
		if l.slots != nil {
			l.slots.Release(1)
		}
	}, nil
}

func (l *Lane) busy(weight int64) *BusyError {
	l.refused.Add(1)
	return &BusyError{Doing: l.doing, InFlight: l.inFlight.Load(), Weight: weight, Lane: l.name}
}

// Name returns the lane's name.
func (l *Lane) Name() string { return l.name }

// Capacity returns how many bytes the lane admits at once.
func (l *Lane) Capacity() int64 { return l.capacity }

// Wait returns how long work may wait to be admitted.
func (l *Lane) Wait() time.Duration { return l.wait }

// InFlight returns how many bytes the lane has admitted and not released.
func (l *Lane) InFlight() int64 { return l.inFlight.Load() }

// Refused returns how many requests the lane refused.
func (l *Lane) Refused() int64 { return l.refused.Load() }
