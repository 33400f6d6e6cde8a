package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
)

// floodPhase is the soak's load-safety fault: a tenant creating Secrets of
// distinct ~1 MiB documents through the API server, floodSenders at a time,
// plus documents that must be denied, sent floodDeniedSends times each,
// while the stream goes on.
type floodPhase struct {
	start, end time.Duration // since the stream began
	sent       int
	decrypted  []string // names, checked afterwards like the stream's
	busy       int      // refused as busy (retryable), then sent again
	denied     int      // tampered or for another key, denied
	lost       []string // any other error
}

// floodSenders and floodBusyRetries shape the soak's flood.
const (
	floodSenders     = 8
	floodPerSender   = 3
	floodDeniedSends = 10
	floodBusyRetries = 30
)

// runFlood creates every payload through c in the apps namespace: valid
// ones until they are stored (sent again after a busy refusal), denied ones
// floodDeniedSends times each.
func runFlood(ctx context.Context, c client.Client, p flood.FloodPayloads, began time.Time) *floodPhase {
	f := &floodPhase{start: time.Since(began)}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	create := func(name string, d flood.FloodDoc) error {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		mu.Lock()
		f.sent++
		mu.Unlock()
		return c.Create(cctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps"}, Data: map[string][]byte{d.File: d.Enc}})
	}
	for s, docs := range p.Heavy {
		wg.Go(func() {
			for j, d := range docs {
				name := fmt.Sprintf("flood-%d-%d", s, j)
				for attempt := 0; ; attempt++ {
					err := create(name, d)
					mu.Lock()
					switch {
					case err == nil:
						f.decrypted = append(f.decrypted, name)
					case strings.Contains(err.Error(), "the webhook is busy") && attempt < floodBusyRetries:
						f.busy++
						mu.Unlock()
						time.Sleep(200 * time.Millisecond)
						continue
					default:
						f.lost = append(f.lost, err.Error())
					}
					mu.Unlock()
					break
				}
			}
		})
	}
	for i, d := range p.Denied {
		wg.Go(func() {
			for j := range floodDeniedSends {
				err := create(fmt.Sprintf("flood-denied-%d-%d", i, j), d)
				mu.Lock()
				switch {
				case err != nil && strings.Contains(err.Error(), d.Denial):
					f.denied++
				case err != nil && strings.Contains(err.Error(), "the webhook is busy"):
					f.busy++
				default:
					f.lost = append(f.lost, fmt.Sprintf("flood-denied-%d-%d: want a denial with %q, got %v", i, j, d.Denial, err))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	f.end = time.Since(began)
	return f
}

// timing is one create of the stream: when it started, and how long it
// took.
type timing struct{ at, took time.Duration }

// latencies returns the sorted durations of the creates that started in
// [from, to).
func latencies(ts []timing, from, to time.Duration) []time.Duration {
	var out []time.Duration
	for _, t := range ts {
		if t.at >= from && t.at < to {
			out = append(out, t.took)
		}
	}
	slices.Sort(out)
	return out
}
