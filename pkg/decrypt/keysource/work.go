package keysource

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/sops-webhook/sops-webhook/pkg/internal/lru"
)

// MaxUnwrapsPerRequest caps the unwraps one request may start across all
// its payloads, cache hits not counted: each distinct data key of a legal
// object costs one, so this is the most documents an object may carry
// (mutate.MaxDocumentsPerObject), plus a values file's key.
const MaxUnwrapsPerRequest = 257

// MaxFailedUnwrapsPerRequest caps the unwraps of one request that may fail,
// remembered failures included. A key that matches a payload's metadata
// and does not open it means a tampered or hand-made payload: one or two
// are an accident, more are someone making the webhook work.
const MaxFailedUnwrapsPerRequest = 4

// ErrTooManyUnwraps is returned by Client.Decrypt once the request's budget
// (WithRequestBudget) is spent. It is the request's fault.
var ErrTooManyUnwraps = errors.New("too many key unwraps for one request")

// The failed-unwrap cache: an unwrap that failed is not tried again for
// failedTTL. It holds a hash of the wrapped key and why it failed, never a
// secret.
const (
	failedCacheSize = 4096
	failedTTL       = time.Minute
)

// requestBudget counts one request's unwraps.
type requestBudget struct{ started, failed atomic.Int32 }

type budgetKey struct{}

// WithRequestBudget returns ctx carrying a fresh unwrap budget for one
// admission request: every Client made with it (one per payload) draws on
// it, so a request of many payloads is capped as a whole.
func WithRequestBudget(ctx context.Context) context.Context {
	return context.WithValue(ctx, budgetKey{}, &requestBudget{})
}

func budgetOf(ctx context.Context) *requestBudget {
	b, _ := ctx.Value(budgetKey{}).(*requestBudget)
	return b
}

// start counts an unwrap about to run, or refuses it.
func (b *requestBudget) start() error {
	if b == nil {
		return nil
	}
	if b.failed.Load() >= MaxFailedUnwrapsPerRequest {
		return fmt.Errorf("%w: %d failed (keysource.MaxFailedUnwrapsPerRequest)", ErrTooManyUnwraps, MaxFailedUnwrapsPerRequest)
	}
	if b.started.Add(1) > MaxUnwrapsPerRequest {
		return fmt.Errorf("%w: more than %d (keysource.MaxUnwrapsPerRequest)", ErrTooManyUnwraps, MaxUnwrapsPerRequest)
	}
	return nil
}

// Spend counts one remote key operation made outside a Client, a rewrap's
// wrap with a KMS or Vault key, against ctx's request budget
// (WithRequestBudget): the unwraps and the wraps of one request are capped
// together. It returns an error wrapping ErrTooManyUnwraps once the budget
// is spent, and nil for a ctx without a budget.
func Spend(ctx context.Context) error { return budgetOf(ctx).start() }

// fail counts an unwrap that did not open its data key.
func (b *requestBudget) fail() {
	if b != nil {
		b.failed.Add(1)
	}
}

// failedCache remembers unwraps that failed, by the data-key cache's key,
// with the error they failed with.
type failedCache = lru.Cache[cacheKey, error]

func newFailedCache(now func() time.Time) *failedCache {
	return lru.New[cacheKey, error](failedCacheSize, failedTTL, now)
}

// Local is implemented by sources whose unwrap is computed in this process
// (age, PGP): it takes a CPU slot, where a remote call waits on the network.
type Local interface {
	local()
}

func (*Age) local() {}
func (*PGP) local() {}

// cpuSlots is how many local unwraps run at once: one fewer than
// processors, at least one, as the budget's heavy lane, so unwraps always
// leave a processor to requests that need none.
func newCPUSlots(n int) *semaphore.Weighted { return semaphore.NewWeighted(int64(max(n, 1))) }
