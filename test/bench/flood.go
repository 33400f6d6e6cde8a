package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/sops-webhook/sops-webhook/test/testbed"
)

// floodRun is the victim's latency with and without a flood of large
// documents (testbed.Flood), and the webhook's peak memory.
type floodRun struct {
	unloaded, flooded []time.Duration
	peak              int64 // bytes
	inCgroup          bool
	took              time.Duration
	tally             map[string]int
}

// floodVictim runs the flood of TestFlood against a fresh webhook at the
// Deployment's memory limit (in a memory cgroup when this process may make
// one): the victim's small requests alone, then during the flood, then
// alone again.
func floodVictim(ctx context.Context, tb *testbed.CommandTB, work, bin string, key testbed.AgeKey, quick bool) (floodRun, error) {
	var res floodRun
	other := testbed.NewAgeKey(tb, false)
	senders, perSender, warm := 8, 3, 1000
	if quick {
		senders, perSender, warm = 2, 1, 100
	}
	payloads := testbed.NewFloodPayloads(tb, testbed.Recipients{Age: []testbed.AgeKey{key}}, testbed.Recipients{Age: []testbed.AgeKey{other}}, senders, perSender)
	dir := filepath.Join(work, "flood")
	config := filepath.Join(work, "config.yaml")
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
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(wh.CABundle)
	client := func() *http.Client {
		return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	}
	victim := testbed.NewVictim(wh.URL, client(), payloads.Small)
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
	fr := testbed.Flood{URL: wh.URL, Client: client, Payloads: payloads, BusyRetries: 30, DeniedSends: 10}.Run(ctx, victim)
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
