package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// floodLimit is the shipped Deployment's memory limit (manifests/base).
const floodLimit = 256 << 20

// The flood's shape: bounded in count, so it stops by itself.
const (
	floodHeavySenders  = 8  // senders of valid documents, half JSON, half YAML
	floodDocsPerSender = 3  // distinct valid documents each heavy sender sends
	floodDeniedSends   = 10 // sends of each document that must be denied
	floodBusyRetries   = 30 // a valid document refused as busy is sent again, at most this often
	floodVictimWarm    = 1000
)

// TestFlood runs the real webhook binary in a memory cgroup at the
// Deployment's limit and floods it over HTTPS on loopback: eight senders
// with distinct valid ~1 MiB documents (JSON and YAML) and one with the
// densest valid document the items cap lets through, eight with documents
// that must be denied (~1 MiB ones with a tampered MAC in each format, or
// for a key the webhook lacks; small hostile ones, flood.HostileDocs),
// while a victim sends small requests, a
// plain Secret and a 1 KiB document in turn. The webhook must survive
// without an OOM kill; every heavy request must be decrypted correctly,
// denied for its own reason, or refused as busy with the retryable message,
// and never end in a connection error; every victim request must be
// answered correctly. Victim latencies and peak memory are reported, not
// asserted.
func TestFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: floods the real webhook binary; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	key, other := sopskit.NewAgeKey(t, false), sopskit.NewAgeKey(t, false)
	mine := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	start := time.Now()
	payloads := flood.NewFloodPayloads(t, mine, sopskit.Recipients{Age: []sopskit.AgeKey{other}}, floodHeavySenders, floodDocsPerSender)
	t.Logf("payloads encrypted with the sops CLI in %s", time.Since(start).Round(time.Second))

	work := t.TempDir()
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	config := filepath.Join(work, "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: team-a\n    age: {identityFile: "+key.IdentityFile+"}\n"), 0o600))
	cg, err := testbed.NewMemoryCgroup("sops-webhook-flood", floodLimit)
	require.NoError(t, err, "the flood test runs the webhook in a memory cgroup")
	t.Cleanup(func() { assert.NoError(t, cg.Remove()) })
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: work, Log: verbose(), Cgroup: cg})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })
	assert.Contains(t, wh.Logs(), `"limit":"256.0 MiB"`, "the webhook read its limit from the cgroup")
	assert.Contains(t, wh.Logs(), `"goMemLimit":"230.4 MiB"`, "GOMEMLIMIT is 90 % of the limit")
	assert.Contains(t, wh.Logs(), fmt.Sprintf(`"heavySlots":%d`, max(1, runtime.GOMAXPROCS(0)-1)), "large requests leave a processor to small ones")

	client := func() *http.Client { return caClient(t, wh.CABundle) }
	victim := flood.NewVictim(wh.URL, client(), payloads.Small)
	// The first requests open the connection and fill the caches.
	for range 20 {
		require.NoError(t, victim.Send(ctx))
	}
	victim.Take()
	for range floodVictimWarm {
		require.NoError(t, victim.Send(ctx))
	}
	unloaded := victim.Take()

	sampling := make(chan struct{})
	peakDone := make(chan int64)
	go func() { peakDone <- samplePeak(cg, sampling) }()
	res := flood.Flood{URL: wh.URL, Client: client, Payloads: payloads, BusyRetries: floodBusyRetries, DeniedSends: floodDeniedSends}.Run(ctx, victim)
	close(sampling)
	sampledPeak := <-peakDone
	require.NoError(t, res.VictimErr, "a victim request was not answered correctly")

	// The webhook survived, and said what it did.
	kills, err := cg.OOMKills()
	require.NoError(t, err)
	assert.Zero(t, kills, "the webhook was OOM-killed")
	resp, err := http.Get(wh.ReadyURL)
	require.NoError(t, err, "the webhook is gone")
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Empty(t, res.Failures)
	assert.Equal(t, payloads.Valid(), res.Tally[flood.FloodDecrypted], "every valid document is decrypted in the end")
	peak, err := cg.Peak()
	require.NoError(t, err)
	assert.Less(t, peak, int64(floodLimit/10*9), "memory stays under GOMEMLIMIT, 90 %% of the limit: the budgets hold it")
	var busy float64
	for _, lane := range []string{"bodies", "heavy", "large"} {
		n, err := wh.Metric(`sops_webhook_budget_refusals_total{lane="` + lane + `"}`)
		require.NoError(t, err)
		busy += n
		t.Logf("busy refusals by the %s lane: %.0f", lane, n)
	}
	assert.Equal(t, float64(res.Tally[flood.FloodValidBusy]+res.Tally[flood.FloodInvalidBusy]), busy, "every busy refusal is counted")
	smallBusy, err := wh.Metric(`sops_webhook_budget_refusals_total{lane="small"}`)
	require.NoError(t, err)
	assert.Zero(t, smallBusy, "no small request was refused")

	t.Logf("flood: %s: %v", res.Took.Round(time.Millisecond), res.Tally)
	t.Logf("victim unloaded: %d requests, p50 %s, p99 %s", len(unloaded), pct(unloaded, 0.50), pct(unloaded, 0.99))
	t.Logf("victim flooded:  %d requests, p50 %s, p99 %s (p99 %.1f× unloaded)", len(res.Victim), pct(res.Victim, 0.50), pct(res.Victim, 0.99),
		float64(pct(res.Victim, 0.99))/float64(max(pct(unloaded, 0.99), 1)))
	t.Logf("memory: cgroup peak %s of %s (sampled usage peak %s)", budget.MiB(peak), budget.MiB(floodLimit), budget.MiB(sampledPeak))
	require.NoError(t, wh.Stop(), "the webhook exits cleanly after the flood")
}

func pct(sorted []time.Duration, p float64) time.Duration {
	return flood.Percentile(sorted, p).Round(10 * time.Microsecond)
}

// samplePeak samples the cgroup's memory use every 50 ms until done.
func samplePeak(cg *testbed.MemoryCgroup, done <-chan struct{}) int64 {
	var peak int64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if u, err := cg.Usage(); err == nil {
			peak = max(peak, u)
		}
		select {
		case <-done:
			return peak
		case <-tick.C:
		}
	}
}

// TestGateOverTLS gives the real binary a body budget smaller than one
// large review and a 1 ms budget wait, and sends large reviews four at a
// time over TLS: each is either decrypted or refused by the body gate (503,
// retryable: "busy reading", read no further than its head, or "busy
// handling", read while every handling slot was taken), never a connection
// error; at least one is refused before its body is read.
func TestGateOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs the real webhook binary; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	key := sopskit.NewAgeKey(t, false)
	doc := flood.NewFloodDoc(t, "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
	work := t.TempDir()
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	config := filepath.Join(work, "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: team-a\n    age: {identityFile: "+key.IdentityFile+"}\n"), 0o600))
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: work, Log: verbose(),
		Args: []string{"--body-budget", "1Mi", "--budget-wait", "1ms"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })

	c := caClient(t, wh.CABundle)
	refused := map[string]int{}
	for burst := 0; burst < 10 && refused["bodies"] == 0; burst++ {
		results := make(chan error, 4)
		for i := range 4 {
			go func() {
				res, err := flood.SendReview(ctx, c, wh.URL, flood.SecretReview(fmt.Sprintf("gate-%d-%d", burst, i), doc))
				switch {
				case err != nil:
					results <- fmt.Errorf("connection error: %w", err)
				case res.Busy() && strings.Contains(res.Message, "the webhook is busy reading"):
					results <- errBusyReading
				case res.Busy() && strings.Contains(res.Message, "the webhook is busy handling"):
					results <- errBusyHandling
				default:
					results <- doc.Check(res)
				}
			}()
		}
		for range 4 {
			switch err := <-results; err {
			case errBusyReading:
				refused["bodies"]++
			case errBusyHandling:
				refused["heavy"]++
			default:
				require.NoError(t, err)
			}
		}
	}
	require.Positive(t, refused["bodies"], "no large body was refused before it was read")
	for _, lane := range []string{"bodies", "heavy"} {
		n, err := wh.Metric(`sops_webhook_budget_refusals_total{lane="` + lane + `"}`)
		require.NoError(t, err)
		assert.EqualValues(t, refused[lane], n, "every refusal by the %s lane is counted", lane)
	}
}

// errBusyReading and errBusyHandling mark the gate's refusals among results.
var (
	errBusyReading  = errors.New("busy reading")
	errBusyHandling = errors.New("busy handling")
)

// TestGateRefusalsThroughAPIServer gives the real binary a body budget of
// 1 MiB and a 1 ms budget wait, and creates Secrets holding ~1 MiB
// documents through the real API server four at a time: each is stored
// decrypted, or refused as the webhook's own 503 (the client sees Service
// Unavailable with "busy reading" or "busy handling"), never as a failed
// call, which the API server reports as an internal error and
// SopsWebhookUnreachable counts as an outage; at least one is refused
// before its body is read.
func TestGateRefusalsThroughAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b := newIdentityBed(ctx, t)
	key := sopskit.NewAgeKey(t, false)
	doc := flood.NewFloodDoc(t, "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
	config := "apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: team-a\n    age: {identityFile: " + key.IdentityFile + "}\n"
	b.startWebhookWith(ctx, t, "gate", config, []string{"--body-budget", "1Mi", "--budget-wait", "1ms"}, nil)

	refused := map[string]int{}
	for burst := 0; burst < 10 && refused["reading"] == 0; burst++ {
		errs := make(chan error, 4)
		for i := range 4 {
			go func() { errs <- b.create(ctx, fmt.Sprintf("gate-%d-%d", burst, i), doc.Enc) }()
		}
		for range 4 {
			err := <-errs
			if err == nil {
				continue
			}
			require.Truef(t, apierrors.IsServiceUnavailable(err), "a busy refusal reaches the client as the webhook's 503: %v", err)
			require.NotContains(t, err.Error(), "failed calling webhook")
			switch msg := err.Error(); {
			case strings.Contains(msg, "the webhook is busy reading"):
				refused["reading"]++
			case strings.Contains(msg, "the webhook is busy handling"):
				refused["handling"]++
			default:
				t.Fatalf("refused otherwise: %v", err)
			}
		}
	}
	require.Positive(t, refused["reading"], "no body was refused unread")
	t.Logf("refusals: %v", refused)
	var list corev1.SecretList
	require.NoError(t, b.cp.Client.List(ctx, &list, client.InNamespace("apps")))
	require.NotEmpty(t, list.Items, "no Secret was admitted")
	for _, s := range list.Items {
		assert.NotContains(t, string(s.Data["app.yaml"]), "ENC[AES256_GCM", "%s is stored decrypted", s.Name)
	}
}
