// Package deferlog adds key/value pairs to a logr.Logger that reach its
// sink only when a line is written.
package deferlog

import (
	"slices"

	"github.com/go-logr/logr"
)

// WithValues returns log with the key/value pairs kv added, as
// log.WithValues(kv...) would, except that log's sink receives them only
// when a line is written. zap encodes values as they are added, so a
// request that logs nothing, which is almost every request, would pay for
// encoding its ids.
func WithValues(log logr.Logger, kv ...any) logr.Logger {
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

// deferredValues is WithValues' sink: sink without kv yet.
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
