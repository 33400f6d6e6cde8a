package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// floodRun is the victim's latency with and without one flood of large
// documents (flood.Flood), and the webhook's peak memory.
type floodRun struct {
	unloaded, flooded []time.Duration
	peak              int64 // bytes
	inCgroup          bool
	took              time.Duration
	tally             map[string]int
}

// ratio is the victim's p99 during the flood over its p99 alone.
func (f floodRun) ratio() float64 {
	return flood.Percentile(f.flooded, 0.99).Seconds() / flood.Percentile(f.unloaded, 0.99).Seconds()
}

// aloneSpread is the lowest and the highest of the runs' victim p99 alone.
func aloneSpread(runs []floodRun) (lo, hi time.Duration) {
	for i, f := range runs {
		p := flood.Percentile(f.unloaded, 0.99)
		if i == 0 || p < lo {
			lo = p
		}
		hi = max(hi, p)
	}
	return lo, hi
}

// floodRuns is how often the flood is run: a p99 of one run moves with
// the machine, so the report gives each run's ratio and their median.
const floodRuns = 3

// floodVictim encrypts the payloads of TestFlood's flood once and runs the
// flood floodRuns times, each against a fresh webhook, so that no document
// is answered from a previous run's cache.
func floodVictim(ctx context.Context, tb *testbed.CommandTB, work, bin string, key sopskit.AgeKey, quick bool) ([]floodRun, error) {
	other := sopskit.NewAgeKey(tb, false)
	senders, perSender, warm, runs := 8, 3, 1000, floodRuns
	if quick {
		senders, perSender, warm, runs = 2, 1, 100, 1
	}
	payloads := flood.NewFloodPayloads(tb, sopskit.Recipients{Age: []sopskit.AgeKey{key}}, sopskit.Recipients{Age: []sopskit.AgeKey{other}}, senders, perSender)
	var out []floodRun
	for i := range runs {
		step("flood %d of %d", i+1, runs)
		res, err := floodOnce(ctx, filepath.Join(work, fmt.Sprintf("flood-%d", i)), filepath.Join(work, "config.yaml"), bin, payloads, warm)
		if err != nil {
			return nil, err
		}
		out = append(out, res)
	}
	return out, nil
}

// floodOnce runs one flood against a fresh webhook at the Deployment's
// memory limit (in a memory cgroup when this process may make one): the
// victim's small requests alone, then during the flood, then alone again.
func floodOnce(ctx context.Context, dir, config, bin string, payloads flood.FloodPayloads, warm int) (floodRun, error) {
	var res floodRun
	cg, err := testbed.NewMemoryCgroup("sops-webhook-bench-flood", 256<<20)
	if err == nil {
		res.inCgroup = true
		defer cg.Remove()
	} else {
		step("flood without a memory cgroup (%v): peak memory is sampled RSS", err)
	}
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: dir, Args: []string{"--log-level", "error"}, Cgroup: cg})
	if err != nil {
		return res, err
	}
	defer wh.Stop()
	client := func() *http.Client {
		return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: wh.TLSConfig()}}
	}
	victim := flood.NewVictim(wh.URL, client(), payloads.Small)
	// The first requests open the connection and fill the caches.
	for range 20 {
		if err := victim.Send(ctx); err != nil {
			return res, err
		}
	}
	victim.Take()
	for range warm {
		if err := victim.Send(ctx); err != nil {
			return res, err
		}
	}
	res.unloaded = victim.Take()
	sampling := make(chan struct{})
	peak := make(chan int64)
	go func() {
		var p int64
		for {
			rss, _ := testbed.ProcessMemory(wh.PID())
			p = max(p, rss*1024)
			select {
			case <-sampling:
				peak <- p
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	fr := flood.Flood{URL: wh.URL, Client: client, Payloads: payloads, BusyRetries: 30, DeniedSends: 10}.Run(ctx, victim)
	close(sampling)
	res.peak, res.flooded, res.took, res.tally = <-peak, fr.Victim, fr.Took, fr.Tally
	if res.inCgroup {
		if p, err := cg.Peak(); err == nil {
			res.peak = p
		}
	}
	if fr.VictimErr != nil {
		return res, fr.VictimErr
	}
	if len(fr.Failures) > 0 {
		return res, fmt.Errorf("flood: %s (and %d more unexpected answers)", fr.Failures[0], len(fr.Failures)-1)
	}
	// As many again alone after the flood, so that the baseline spans the
	// flood rather than the moment before it.
	for range warm {
		if err := victim.Send(ctx); err != nil {
			return res, err
		}
	}
	res.unloaded = append(res.unloaded, victim.Take()...)
	slices.Sort(res.unloaded)
	return res, nil
}
