package lazyctx

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/internal/ctxtest"
)

// TestWithTimeout checks that WithTimeout's context answers as
// context.WithTimeout's does, and starts a timer only when asked for Done.
func TestWithTimeout(t *testing.T) {
	const short = 20 * time.Millisecond
	t.Run("answers without a timer until asked for Done", func(t *testing.T) {
		parent := &ctxtest.DoneCounter{Context: context.WithValue(context.Background(), ctxKey{}, "v")}
		ctx, cancel := WithTimeout(parent, time.Minute)
		defer cancel()
		deadline, ok := ctx.Deadline()
		require.True(t, ok)
		require.WithinDuration(t, time.Now().Add(time.Minute), deadline, time.Second)
		require.NoError(t, ctx.Err())
		require.Equal(t, "v", ctx.Value(ctxKey{}))
		require.Zero(t, parent.Asked(), "a timer was started")
		select {
		case <-ctx.Done():
			t.Fatal("done before its deadline")
		default:
		}
		require.NotZero(t, parent.Asked())
	})
	t.Run("one made from it and cancelled unasked starts no timer on it", func(t *testing.T) {
		watched := &ctxtest.DoneCounter{Context: context.WithValue(context.Background(), ctxKey{}, "v")}
		outer, cancelOuter := WithTimeout(watched, time.Minute)
		defer cancelOuter()
		inner, cancelInner := WithTimeout(outer, time.Second)
		cancelInner()
		require.ErrorIs(t, inner.Err(), context.Canceled)
		require.Equal(t, "v", inner.Value(ctxKey{}), "a cancelled context lost its parent's values")
		require.NoError(t, outer.Err())
		require.Zero(t, watched.Asked(), "cancelling the inner context started the outer one's timer")
	})
	t.Run("past the deadline it is done, asked or not", func(t *testing.T) {
		ctx, cancel := WithTimeout(context.Background(), short)
		defer cancel()
		time.Sleep(2 * short)
		require.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
		require.ErrorIs(t, context.Cause(ctx), context.DeadlineExceeded)
		<-ctx.Done()
	})
	t.Run("a waiter is woken at the deadline", func(t *testing.T) {
		ctx, cancel := WithTimeout(context.Background(), short)
		defer cancel()
		<-ctx.Done()
		require.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
	})
	t.Run("a context made from it ends at its deadline", func(t *testing.T) {
		ctx, cancel := WithTimeout(context.Background(), short)
		defer cancel()
		call, stop := context.WithTimeout(ctx, time.Minute)
		defer stop()
		<-call.Done()
		require.ErrorIs(t, call.Err(), context.DeadlineExceeded)
	})
	t.Run("an earlier deadline of the parent wins", func(t *testing.T) {
		parent, stop := context.WithTimeout(context.Background(), short)
		defer stop()
		ctx, cancel := WithTimeout(parent, time.Minute)
		defer cancel()
		deadline, _ := ctx.Deadline()
		want, _ := parent.Deadline()
		require.Equal(t, want, deadline)
	})
	t.Run("the parent's cancellation ends it", func(t *testing.T) {
		parent, cancelParent := context.WithCancel(context.Background())
		ctx, cancel := WithTimeout(parent, time.Minute)
		defer cancel()
		cancelParent()
		require.ErrorIs(t, ctx.Err(), context.Canceled)
		<-ctx.Done()
	})
	t.Run("goroutines may ask at once", func(t *testing.T) {
		ctx, cancel := WithTimeout(context.Background(), short)
		defer cancel()
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				_ = ctx.Err()
				_ = ctx.Value(ctxKey{})
				<-ctx.Done()
			})
		}
		wg.Wait()
		require.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
	})
	for _, asked := range []bool{false, true} {
		name := map[bool]string{false: "cancel ends it before a timer started", true: "cancel ends it after a timer started"}[asked]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := WithTimeout(context.Background(), time.Minute)
			if asked {
				_ = ctx.Done()
			}
			cancel()
			require.ErrorIs(t, ctx.Err(), context.Canceled)
			<-ctx.Done()
			require.False(t, errors.Is(ctx.Err(), context.DeadlineExceeded))
		})
	}
}

type ctxKey struct{}
