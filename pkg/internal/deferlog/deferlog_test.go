package deferlog

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/stretchr/testify/require"
)

// TestDeferredValues checks that the values WithValues adds appear
// in every line written, and reach the sink only when a line is written.
func TestDeferredValues(t *testing.T) {
	var lines []string
	base := funcr.New(func(prefix, args string) { lines = append(lines, prefix+" "+args) }, funcr.Options{Verbosity: 0})
	counted := &valuesCounter{LogSink: base.GetSink(), added: new(atomic.Int64)}
	log := WithValues(logr.New(counted).WithName("admission"), "requestID", "uid-1", "kind", "Secret")

	log.V(1).Info("not written")
	log = log.WithValues("step", "decode").WithName("mutate")
	require.Zero(t, counted.added.Load(), "values were handed to the sink before a line was written")
	require.Empty(t, lines)

	log.Info("refused", "field", "data.x")
	log.Error(errors.New("boom"), "failed")
	require.Len(t, lines, 2)
	for _, l := range lines {
		require.Contains(t, l, "admission/mutate")
		require.Contains(t, l, `"requestID"="uid-1" "kind"="Secret" "step"="decode"`)
	}
	require.Contains(t, lines[0], `"field"="data.x"`)
	require.Contains(t, lines[1], `"error"="boom"`)
}

// valuesCounter counts the calls to its WithValues.
type valuesCounter struct {
	logr.LogSink
	added *atomic.Int64
}

func (c *valuesCounter) WithValues(kv ...any) logr.LogSink {
	c.added.Add(1)
	return &valuesCounter{LogSink: c.LogSink.WithValues(kv...), added: c.added}
}

func (c *valuesCounter) WithName(name string) logr.LogSink {
	return &valuesCounter{LogSink: c.LogSink.WithName(name), added: c.added}
}
