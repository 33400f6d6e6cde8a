package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// The idle and slow flood's shape.
const (
	// idleClients announce a 64 KiB review and send nothing: more than
	// the replica's connection cap, and, at what each cost before the
	// cap, more than its memory.
	idleClients = 3000
	// slowClients announce a 3 MiB review and send slowTrickle every
	// slowEvery.
	slowClients = 40
	slowTrickle = 1 << 10
	slowEvery   = 200 * time.Millisecond
	// slowRequestTimeout is the webhook's --request-timeout here.
	slowRequestTimeout = 4 * time.Second
)

// TestFloodOfIdleAndSlowClients runs the real binary in a memory cgroup at
// the Deployment's limit, with the API server's client certificate for
// every client, and holds open slowClients connections that trickle a body
// announced as 3 MiB and idleClients that announce a body and send nothing.
// Meanwhile a victim on its kept-alive connection sends small reviews and a
// ~1 MiB document. The webhook must survive without an OOM kill and stay
// under GOMEMLIMIT; every victim request must be answered correctly; the
// connections past the cap are closed unread and counted; every slow
// sender is answered 408 once --request-timeout passed.
func TestFloodOfIdleAndSlowClients(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: floods the real webhook binary; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	key := sopskit.NewAgeKey(t, false)
	mine := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	small := sopskit.SopsEncrypt(t, []byte("PASSWORD=slow-clients\n"), "dotenv", mine)
	large := flood.NewFloodDoc(t, "yaml", mine)

	work := t.TempDir()
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	config := filepath.Join(work, "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte(key.Config("team-a")), 0o600))
	cg, err := testbed.NewMemoryCgroup("sops-webhook-slow", floodLimit)
	require.NoError(t, err, "the test runs the webhook in a memory cgroup")
	t.Cleanup(func() { assert.NoError(t, cg.Remove()) })
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: work, Log: verbose(), Cgroup: cg,
		Args: []string{"--request-timeout", slowRequestTimeout.String(), "--decrypt-timeout", "3s"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })

	victim := flood.NewVictim(wh.URL, caClient(t, wh.CABundle), []flood.FloodDoc{{File: "app.env", Enc: small, Plain: []byte("PASSWORD=slow-clients\n")}})
	for range 20 {
		require.NoError(t, victim.Send(ctx), "the victim's connection is open before the flood")
	}
	sampling := make(chan struct{})
	peakDone := make(chan int64)
	go func() { peakDone <- samplePeak(cg, sampling) }()

	// announce opens a TLS connection as the API server would and sends a
	// review's headers announcing n bytes.
	announce := func(n int) (net.Conn, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", wh.Addr, wh.TLSConfig())
		if err != nil {
			return nil, err
		}
		if _, err := fmt.Fprintf(c, "POST /mutate HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", wh.Addr, n); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}

	// Slow senders first: they trickle until the webhook answers.
	var (
		wg               sync.WaitGroup
		timedOut, cutOff atomic.Int64
		slowOpened       atomic.Int64
		slowStart        = time.Now()
	)
	for range slowClients {
		c, err := announce(3 << 20)
		require.NoError(t, err, "a slow sender within the cap is accepted")
		slowOpened.Add(1)
		t.Cleanup(func() { c.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			answered := make(chan string, 1)
			go func() {
				_ = c.SetReadDeadline(time.Now().Add(slowRequestTimeout + 10*time.Second))
				line, _ := bufio.NewReader(c).ReadString('\n')
				answered <- line
			}()
			chunk := []byte(strings.Repeat("a", slowTrickle))
			tick := time.NewTicker(slowEvery)
			defer tick.Stop()
			for {
				select {
				case line := <-answered:
					if strings.HasPrefix(line, "HTTP/1.1 408 ") {
						timedOut.Add(1)
					} else {
						cutOff.Add(1)
					}
					return
				case <-tick.C:
					_, _ = c.Write(chunk)
				}
			}
		}()
	}

	// Then the idle announcements, 64 at a time.
	var idleOpened, idleRefused atomic.Int64
	var idleConns sync.Map
	sem := make(chan struct{}, 64)
	var iwg sync.WaitGroup
	for i := range idleClients {
		sem <- struct{}{}
		iwg.Add(1)
		go func() {
			defer func() { <-sem; iwg.Done() }()
			c, err := announce(64 << 10)
			if err != nil {
				idleRefused.Add(1)
				return
			}
			idleOpened.Add(1)
			idleConns.Store(i, c)
		}()
	}
	iwg.Wait()
	t.Logf("idle announcements: %d held open, %d refused; slow senders: %d", idleOpened.Load(), idleRefused.Load(), slowOpened.Load())

	// The victim, on its kept-alive connection, is answered throughout.
	for range 200 {
		require.NoError(t, victim.Send(ctx))
	}
	var decrypted bool
	for try := 0; try < 20 && !decrypted; try++ {
		res, err := flood.SendReview(ctx, caClient(t, wh.CABundle), wh.URL, flood.SecretReview(fmt.Sprintf("large-%d", try), large))
		if err != nil {
			// A new connection may be refused while the cap is full:
			// retried, as the API server's caller would.
			time.Sleep(200 * time.Millisecond)
			continue
		}
		require.True(t, res.Allowed || res.Busy(), "the large document is decrypted or refused as busy: %d %s", res.Code, res.Message)
		if res.Allowed {
			require.NoError(t, large.Check(res))
			decrypted = true
		}
	}
	assert.True(t, decrypted, "a ~1 MiB document is decrypted while slow senders hold their connections")

	wg.Wait()
	slowTook := time.Since(slowStart)
	idleConns.Range(func(_, c any) bool { c.(net.Conn).Close(); return true })
	close(sampling)
	sampledPeak := <-peakDone

	kills, err := cg.OOMKills()
	require.NoError(t, err)
	assert.Zero(t, kills, "the webhook was OOM-killed")
	peak, err := cg.Peak()
	require.NoError(t, err)
	assert.Less(t, peak, int64(floodLimit/10*9), "memory stays under GOMEMLIMIT, 90 %% of the limit")
	resp, err := http.Get(wh.ReadyURL)
	require.NoError(t, err, "the webhook is gone")
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	assert.EqualValues(t, slowClients, timedOut.Load(), "every slow sender is answered 408 after --request-timeout (%d cut off otherwise)", cutOff.Load())
	assert.Positive(t, idleRefused.Load(), "connections past the cap are refused")
	refused, err := wh.Metric("sops_webhook_connections_refused_total")
	require.NoError(t, err)
	assert.GreaterOrEqual(t, refused, float64(idleRefused.Load()), "every connection refused for the cap is counted")
	smallBusy, err := wh.Metric(`sops_webhook_budget_refusals_total{lane="small"}`)
	require.NoError(t, err)
	assert.Zero(t, smallBusy, "no small request was refused")
	t.Logf("slow senders answered within %s; memory: cgroup peak %s of %s (sampled usage peak %s)",
		slowTook.Round(100*time.Millisecond), budget.MiB(peak), budget.MiB(floodLimit), budget.MiB(sampledPeak))
}
