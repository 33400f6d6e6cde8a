// Command soak runs a sustained stream of creates through a real API server
// to two webhook replicas behind a Service stand-in, for a bounded time on
// loopback, and injects faults while it runs (make soak):
//
//   - the AWS KMS stand-in hangs for a while, then answers again;
//   - each replica is restarted in turn (SIGTERM, then a new process);
//   - the self-managed certificates are rotated.
//
// It reports requests sent, admitted, denied (with the reason) and lost, and
// the replicas' memory over time, and checks that nothing admitted was
// stored encrypted. It exits non-zero if a request was lost without a clear
// denial or ciphertext was stored.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

func main() {
	duration := flag.Duration("duration", 3*time.Minute, "how long the stream runs")
	workers := flag.Int("workers", 8, "concurrent writers")
	out := flag.String("out", "docs/soak.md", "report to write")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *duration, *workers, *out)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}
