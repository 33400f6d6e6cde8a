// Command bench measures sops-webhook against baselines measured in the same
// run and writes docs/benchmarks.md with a plot (make bench):
//
//   - a load generator sends AdmissionReviews over HTTPS on loopback to the
//     real webhook binary and to a no-op webhook on the same server and TLS
//     settings, for four scenarios at fixed concurrency levels;
//   - the same documents decrypted by the sops CLI, one process per file;
//   - remote KMS calls and wall time for 1,000 Secrets from one values file,
//     with and without the data-key cache (AWS KMS stand-in);
//   - peak RSS and goroutines of the webhook under load;
//   - `helm install` of a chart with 100 encrypted Secrets through the real
//     API server with the webhook, against the same chart in plaintext
//     without it;
//   - the Go benchmarks of package decrypt.
//
// Every figure is reported as a ratio to its baseline; none is a pass/fail
// threshold.
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

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
)

func main() {
	out := flag.String("out", "docs/benchmarks.md", "report to write; the plot goes next to it as benchmarks.svg")
	duration := flag.Duration("duration", 6*time.Second, "measuring time per load point and server, split into alternating rounds")
	quick := flag.Bool("quick", false, "shorter runs, for trying the tool")
	flag.Parse()
	// envtest and controller-runtime log through this; the report is the
	// output.
	ctrllog.SetLogger(logr.Discard())
	decrypt.DiscardLibraryLogs() // the in-process rates decrypt, as the webhook does
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *out, *duration, *quick)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
