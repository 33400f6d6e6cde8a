package budget

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/internal/ctxtest"
)

func TestLane(t *testing.T) {
	ctx := context.Background()
	t.Run("admits up to its capacity, then refuses after the wait", func(t *testing.T) {
		l := NewLane("test", "decrypting", 100, 0, 20*time.Millisecond)
		r1, err := l.Acquire(ctx, 60)
		require.NoError(t, err)
		r2, err := l.Acquire(ctx, 40)
		require.NoError(t, err)
		require.EqualValues(t, 100, l.InFlight())
		_, err = l.Acquire(ctx, 1)
		var busy *BusyError
		require.ErrorAs(t, err, &busy)
		require.EqualValues(t, 100, busy.InFlight)
		require.Equal(t, "test", busy.Lane)
		require.EqualValues(t, 1, l.Refused())
		r1()
		r1() // a second release gives nothing back twice
		require.EqualValues(t, 40, l.InFlight())
		r3, err := l.Acquire(ctx, 60)
		require.NoError(t, err, "released room is admitted again")
		r2()
		r3()
		require.Zero(t, l.InFlight())
	})
	t.Run("a waiter is admitted when room is released", func(t *testing.T) {
		l := NewLane("test", "decrypting", 100, 0, time.Minute)
		r1, err := l.Acquire(ctx, 100)
		require.NoError(t, err)
		done := make(chan error)
		go func() {
			r, err := l.Acquire(ctx, 50)
			if err == nil {
				r()
			}
			done <- err
		}()
		r1()
		require.NoError(t, <-done)
	})
	t.Run("more than the capacity runs alone", func(t *testing.T) {
		l := NewLane("test", "decrypting", 100, 0, 20*time.Millisecond)
		r, err := l.Acquire(ctx, 1000)
		require.NoError(t, err)
		require.EqualValues(t, 100, l.InFlight())
		_, err = l.Acquire(ctx, 1)
		require.Error(t, err)
		r()
	})
	t.Run("slots cap admissions whatever their weight", func(t *testing.T) {
		l := NewLane("test", "decrypting", 100, 1, 20*time.Millisecond)
		r, err := l.Acquire(ctx, 1)
		require.NoError(t, err)
		_, err = l.Acquire(ctx, 1)
		require.Error(t, err)
		r()
		r, err = l.Acquire(ctx, 1)
		require.NoError(t, err)
		r()
	})
	t.Run("the request's deadline ends the wait", func(t *testing.T) {
		l := NewLane("test", "decrypting", 1, 0, time.Minute)
		r, err := l.Acquire(ctx, 1)
		require.NoError(t, err)
		defer r()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = l.Acquire(cctx, 1)
		require.Error(t, err)
		require.Less(t, time.Since(start), 30*time.Second, "waited for the lane's wait, not the deadline")
	})
	t.Run("room is admitted at once, even past the deadline", func(t *testing.T) {
		l := NewLane("test", "decrypting", 100, 1, time.Minute)
		done, cancel := context.WithCancel(ctx)
		cancel()
		r, err := l.Acquire(done, 100)
		require.NoError(t, err, "a request that spent its wait elsewhere still takes free room")
		_, err = l.Acquire(done, 1)
		require.Error(t, err, "but does not wait for it")
		r()
	})
	t.Run("only a request that waits starts a timer", func(t *testing.T) {
		// context.WithTimeout asks its parent for Done; counting the asks
		// tells whether Acquire made one.
		l := NewLane("test", "decrypting", 100, 1, 20*time.Millisecond)
		watched := &ctxtest.DoneCounter{Context: ctx}
		r, err := l.Acquire(watched, 100)
		require.NoError(t, err)
		require.Zero(t, watched.Asked(), "an admission with room started a timer")
		_, err = l.Acquire(watched, 1)
		require.Error(t, err)
		require.NotZero(t, watched.Asked(), "a request that had to wait did not wait on its context")
		r()
	})
	t.Run("the message says how much is in flight", func(t *testing.T) {
		err := &BusyError{Doing: "decrypting", InFlight: 3 << 20}
		require.Equal(t, "the webhook is busy decrypting 3.0 MiB", err.Error())
	})
}

// TestSmallNeverWaitsBehindLarge fills the large lane and queues more heavy
// work behind it: a small request is still admitted at once.
func TestSmallNeverWaitsBehindLarge(t *testing.T) {
	ctx := context.Background()
	b := New(Config{Bytes: 8 << 20, LargeSlots: 1, Wait: time.Minute})
	held, err := b.Acquire(ctx, 1<<20)
	require.NoError(t, err)
	defer held()
	for range 3 {
		go func() {
			if r, err := b.Acquire(ctx, 1<<20); err == nil {
				r()
			}
		}()
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := b.Acquire(sctx, 1<<10)
	require.NoError(t, err, "a small request waited behind large ones")
	r()

	// The small lane has its own limit: filled, it refuses small work,
	// and the refusal counts both lanes' bytes.
	small := b.Lanes()[0]
	fill, err := small.Acquire(ctx, small.Capacity())
	require.NoError(t, err)
	defer fill()
	qctx, qcancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer qcancel()
	_, err = b.Acquire(qctx, 1<<10)
	var busy *BusyError
	require.True(t, errors.As(err, &busy))
	require.Equal(t, small.Capacity()+b.Lanes()[1].InFlight(), busy.InFlight)
}

func TestForLimit(t *testing.T) {
	s := ForLimit(256 << 20)
	require.EqualValues(t, 256<<20/10*9, s.GoMemLimit)
	require.Greater(t, s.Decrypt, int64(2<<20), "the default limit admits two of the largest documents")
	require.LessOrEqual(t, ReservedBytes+int64(s.Connections)*ConnectionCost+s.Decrypt*DecryptFactor+s.Bodies*BodyFactor, s.GoMemLimit, "the budgets fit the soft limit")
	require.Greater(t, s.Connections, 128, "the default limit holds more connections than the API server keeps")
	tiny := ForLimit(64 << 20)
	require.EqualValues(t, 1<<20, tiny.Decrypt, "a small limit still admits one document at a time")
	require.EqualValues(t, MinConnections, tiny.Connections)
}

func TestMemoryLimit(t *testing.T) {
	write := func(t *testing.T, dir, path, content string) {
		t.Helper()
		p := filepath.Join(dir, path)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	tests := []struct {
		name   string
		proc   string
		files  map[string]string
		want   int64
		source string
		err    bool
	}{
		{name: "v1 process cgroup", proc: "4:memory:/flood\n3:cpu,cpuacct:/\n",
			files: map[string]string{"memory/flood/memory.limit_in_bytes": "268435456\n"}, want: 256 << 20, source: "memory/flood/memory.limit_in_bytes"},
		{name: "v1 combined controllers", proc: "4:memory,hugetlb:/a\n",
			files: map[string]string{"memory/a/memory.limit_in_bytes": "1048576\n"}, want: 1 << 20, source: "memory/a/memory.limit_in_bytes"},
		{name: "v1 in a cgroup namespace", proc: "4:memory:/kubepods/pod1/c1\n",
			files: map[string]string{"memory/memory.limit_in_bytes": "134217728\n"}, want: 128 << 20, source: "memory/memory.limit_in_bytes"},
		{name: "v1 unlimited", proc: "4:memory:/\n",
			files: map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}, want: 0, source: "memory/memory.limit_in_bytes"},
		{name: "v2", proc: "0::/pod\n", files: map[string]string{"pod/memory.max": "536870912\n"}, want: 512 << 20, source: "pod/memory.max"},
		{name: "v2 max", proc: "0::/\n", files: map[string]string{"memory.max": "max\n"}, want: 0, source: "memory.max"},
		{name: "no memory controller", proc: "3:cpu:/\n", want: 0},
		{name: "garbage", proc: "0::/\n", files: map[string]string{"memory.max": "lots\n"}, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "proc", tt.proc)
			for p, c := range tt.files {
				write(t, dir, filepath.Join("cg", p), c)
			}
			got, source, err := cgroupLimit(filepath.Join(dir, "proc"), filepath.Join(dir, "cg"))
			if tt.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			if tt.source != "" {
				require.Equal(t, filepath.Join(dir, "cg", tt.source), source)
			}
		})
	}
	t.Run("the Downward API's value wins", func(t *testing.T) {
		t.Setenv("TEST_MEMORY_LIMIT", "268435456")
		got, source, err := MemoryLimit("TEST_MEMORY_LIMIT")
		require.NoError(t, err)
		require.EqualValues(t, 256<<20, got)
		require.Equal(t, "$TEST_MEMORY_LIMIT", source)
	})
	t.Run("a bad Downward API value is an error", func(t *testing.T) {
		t.Setenv("TEST_MEMORY_LIMIT", "256Mi")
		_, _, err := MemoryLimit("TEST_MEMORY_LIMIT")
		require.ErrorContains(t, err, "TEST_MEMORY_LIMIT")
	})
}
