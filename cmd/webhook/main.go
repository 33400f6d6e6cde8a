// Command webhook serves sops-webhook's mutating admission endpoint.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(main1())
}

func main1() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if err == nil {
		err = run(ctx, opts, os.Stderr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sops-webhook:", err)
		return 1
	}
	return 0
}
