package budget

import (
	"context"
	"runtime"
	"time"
)

// SmallWeight is the heaviest work the small lane admits: 64 KiB, far more
// than the SOPS payloads of a typical Secret, far less than one large
// document.
const SmallWeight = 64 << 10

// DefaultWait is how long work waits to be admitted before it is refused:
// well inside the default decrypt timeout (5 s) and the webhook's
// timeoutSeconds (10 s), so a refusal reaches the client as the webhook's
// own clear message rather than as the API server's timeout.
const DefaultWait = 2 * time.Second

// Budget admits decryption work in two lanes: work up to SmallWeight in a
// small lane of its own, heavier work in the large lane, which also runs at
// most LargeSlots admissions at once. It is safe for concurrent use.
type Budget struct {
	small, large *Lane
}

// Config sizes a Budget.
type Config struct {
	// Bytes is the whole budget. The small lane gets an eighth of it, and
	// at least 16 × SmallWeight; the large lane the rest.
	Bytes int64
	// LargeSlots caps the heavy admissions running at once; 0 means
	// HeavySlots().
	LargeSlots int
	// Wait is how long work may wait to be admitted; 0 means DefaultWait.
	Wait time.Duration
}

// New returns the Budget c describes.
func New(c Config) *Budget {
	if c.Wait <= 0 {
		c.Wait = DefaultWait
	}
	if c.LargeSlots <= 0 {
		c.LargeSlots = HeavySlots()
	}
	small := max(c.Bytes/8, 16*SmallWeight)
	large := max(c.Bytes-small, SmallWeight)
	return &Budget{
		small: NewLane("small", "decrypting", small, 0, c.Wait),
		large: NewLane("large", "decrypting", large, c.LargeSlots, c.Wait),
	}
}

// HeavySlots is how many heavy pieces of work may run at once: one fewer
// than GOMAXPROCS, at least one, so heavy work always leaves a processor to
// light work.
func HeavySlots() int { return max(1, runtime.GOMAXPROCS(0)-1) }

// Acquire admits weight bytes of decryption work in the lane its weight
// belongs to, and returns the function that gives them back. The error is
// always a *BusyError whose InFlight counts both lanes.
func (b *Budget) Acquire(ctx context.Context, weight int64) (release func(), err error) {
	lane := b.large
	if weight <= SmallWeight {
		lane = b.small
	}
	release, err = lane.Acquire(ctx, weight)
	if busy, ok := err.(*BusyError); ok {
		busy.InFlight = b.small.InFlight() + b.large.InFlight()
	}
	return release, err
}

// Lanes returns the small and the large lane, for metrics.
func (b *Budget) Lanes() []*Lane { return []*Lane{b.small, b.large} }
