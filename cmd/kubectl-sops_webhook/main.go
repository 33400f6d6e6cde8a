// Command kubectl-sops_webhook is the kubectl plugin of sops-webhook
// (kubectl sops-webhook): it reads the recipients the webhook publishes,
// writes .sops.yaml creation rules for one or more clusters, rewraps files
// to a key's current generation through the webhook, and shows, rotates and
// retires generations. It never reads a private key.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot(streams{in: os.Stdin, out: os.Stdout, errOut: os.Stderr}).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
