package main

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRatioMedian(t *testing.T) {
	tests := []struct {
		name       string
		noop, wh   []float64
		want       float64
		wantSpread [2]float64
	}{
		{"odd rounds", []float64{100, 100, 100}, []float64{90, 50, 95}, 0.90, [2]float64{0.50, 0.95}},
		{"even rounds average the middle two", []float64{100, 200, 100, 100}, []float64{80, 200, 90, 60}, 0.85, [2]float64{0.60, 1.00}},
		{"one slow no-op round does not sway it", []float64{100, 20, 100}, []float64{90, 90, 88}, 0.90, [2]float64{0.88, 4.5}},
		{"no rounds", nil, nil, 0, [2]float64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, spread := ratio{noop: point{roundRPS: tt.noop}, wh: point{roundRPS: tt.wh}}.median()
			assert.InDelta(t, tt.want, q, 1e-9)
			assert.InDelta(t, tt.wantSpread[0], spread[0], 1e-9)
			assert.InDelta(t, tt.wantSpread[1], spread[1], 1e-9)
		})
	}
}

func TestMergeKeepsRounds(t *testing.T) {
	p := merge([]point{
		{lat: make([]time.Duration, 100), took: time.Second, cpu: 30 * time.Millisecond, errors: 1},
		{lat: make([]time.Duration, 300), took: 2 * time.Second, cpu: 50 * time.Millisecond},
	})
	assert.Equal(t, []float64{100, 150}, p.roundRPS)
	assert.InDelta(t, 400.0/3, p.rps, 1e-9)
	assert.Equal(t, 80*time.Millisecond, p.cpu, "each round's CPU counted once")
	assert.Equal(t, 200*time.Microsecond, p.cpuPerRequest())
	assert.Equal(t, int64(1), p.errors)
	// run merges the points load returns, each merged from one round.
	a := merge([]point{{lat: make([]time.Duration, 100), took: time.Second, cpu: 30 * time.Millisecond}})
	b := merge([]point{{lat: make([]time.Duration, 300), took: 2 * time.Second, cpu: 50 * time.Millisecond}})
	q := merge([]point{a, b})
	assert.Equal(t, []float64{100, 150}, q.roundRPS)
	assert.Equal(t, 80*time.Millisecond, q.cpu)
}

func TestProcessCPU(t *testing.T) {
	before := processCPU(os.Getpid())
	for start := time.Now(); processCPU(os.Getpid()) == before; {
		require.Less(t, time.Since(start), 10*time.Second, "busy work never showed in /proc/self/stat")
		for i := 0; i < 1e6; i++ {
			sink += i
		}
	}
	assert.Zero(t, processCPU(-1), "a process that is not there counts nothing")
}

var sink int

func TestMedian(t *testing.T) {
	assert.Equal(t, 2.0, median([]float64{3, 1, 2}))
	assert.Equal(t, 2.5, median([]float64{4, 1, 3, 2}))
	assert.Equal(t, 7.0, median([]float64{7}))
}

func TestAloneSpread(t *testing.T) {
	run := func(p99 time.Duration) floodRun {
		lat := make([]time.Duration, 100)
		for i := range lat {
			lat[i] = time.Millisecond
		}
		lat[99] = p99
		return floodRun{unloaded: lat}
	}
	tests := []struct {
		name   string
		runs   []floodRun
		lo, hi time.Duration
	}{
		{"one run", []floodRun{run(3 * time.Millisecond)}, 3 * time.Millisecond, 3 * time.Millisecond},
		{"lowest first", []floodRun{run(2 * time.Millisecond), run(7 * time.Millisecond), run(5 * time.Millisecond)}, 2 * time.Millisecond, 7 * time.Millisecond},
		{"lowest last", []floodRun{run(7 * time.Millisecond), run(5 * time.Millisecond), run(2 * time.Millisecond)}, 2 * time.Millisecond, 7 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo, hi := aloneSpread(tt.runs)
			assert.Equal(t, tt.lo, lo)
			assert.Equal(t, tt.hi, hi)
		})
	}
}
