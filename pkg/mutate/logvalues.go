package mutate

import (
	"slices"

	"github.com/go-logr/logr"
)

// withDeferredValues returns log with the key/value pairs kv added, as
// log.WithValues(kv...) would, except that log's sink receives them only
// when a line is written. zap, the webhook's logger, encodes values as they
// are added; a request that logs nothing, which is almost every request,
// then paid more for its logger than for decoding its Secret's data.
func withDeferredValues(log logr.Logger, kv ...any) logr.Logger {
	sink := log.GetSink()
	if sink == nil {
		return log
	}
	// The wrapper adds one frame between logr and the sink, which a sink
	// that reports the caller skips.
	if cd, ok := sink.(logr.CallDepthLogSink); ok {
		sink = cd.WithCallDepth(1)
	}
	return log.WithSink(&deferredValues{sink: sink, kv: kv})
}

// deferredValues is withDeferredValues' sink: sink without kv yet.
type deferredValues struct {
	sink logr.LogSink
	kv   []any
}

func (d *deferredValues) Init(info logr.RuntimeInfo) { d.sink.Init(info) }
func (d *deferredValues) Enabled(level int) bool     { return d.sink.Enabled(level) }

func (d *deferredValues) Info(level int, msg string, kv ...any) {
	d.sink.WithValues(d.kv...).Info(level, msg, kv...)
}

func (d *deferredValues) Error(err error, msg string, kv ...any) {
	d.sink.WithValues(d.kv...).Error(err, msg, kv...)
}

func (d *deferredValues) WithValues(kv ...any) logr.LogSink {
	return &deferredValues{sink: d.sink, kv: append(slices.Clip(d.kv), kv...)}
}

func (d *deferredValues) WithName(name string) logr.LogSink {
	return &deferredValues{sink: d.sink.WithName(name), kv: d.kv}
}

func (d *deferredValues) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := d.sink.(logr.CallDepthLogSink); ok {
		return &deferredValues{sink: cd.WithCallDepth(depth), kv: d.kv}
	}
	return d
}
