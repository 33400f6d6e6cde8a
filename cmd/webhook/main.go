// Command webhook serves sops-webhook's mutating admission endpoint.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
)

func main() {
	os.Exit(main1())
}

func main1() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if err == nil {
		// The process-wide settings, made here only: controller-runtime's
		// logger (its webhook server logs through it), and sops' own
		// package-level loggers silenced, since one of them logs a
		// comment's value when it fails to decrypt.
		log := newLogger(opts.logLevel, os.Stderr)
		ctrllog.SetLogger(log)
		decrypt.DiscardLibraryLogs()
		err = run(ctx, opts, log)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sops-webhook:", err)
		return 1
	}
	return 0
}
