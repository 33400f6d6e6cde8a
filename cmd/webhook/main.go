// Command webhook serves sops-webhook's mutating admission endpoint.
package main

import (
	"context"
	"fmt"
	stdlog "log"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
)

func main() {
	os.Exit(runWebhook())
}

// runWebhook parses the flags, makes the process-wide settings and runs
// the webhook, or the caBundle controller, until a signal stops it. It
// returns the exit code.
func runWebhook() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	var mem memoryPlan
	if err == nil {
		mem, err = planMemory(opts.memory)
	}
	if err == nil {
		// The process-wide settings, made here only: controller-runtime's
		// logger (its webhook server logs through it), sops' own
		// package-level loggers silenced, since one of them logs a
		// comment's value when it fails to decrypt, and the Go runtime's
		// soft memory limit at 90 % of the container's, unless GOMEMLIMIT
		// sets it.
		log := newLogger(opts.logLevel, os.Stderr)
		ctrllog.SetLogger(log)
		// net/http's servers log through the standard logger, a line per
		// failed TLS handshake: every refused caller and every readiness
		// probe's connect. Those go to debug, the rest to info, as JSON.
		stdlog.SetFlags(0)
		stdlog.SetOutput(stdLogWriter{log.WithName("net/http")})
		decrypt.DiscardLibraryLogs()
		goMemLimit := "from $GOMEMLIMIT"
		switch {
		case os.Getenv("GOMEMLIMIT") != "":
		case mem.limited:
			debug.SetMemoryLimit(mem.GoMemLimit)
			goMemLimit = budget.MiB(mem.GoMemLimit)
		default:
			goMemLimit = "none"
		}
		log.Info("memory", "limit", budget.MiB(mem.Limit), "source", mem.source, "goMemLimit", goMemLimit,
			"decryptBudget", budget.MiB(mem.Decrypt), "bodyBudget", budget.MiB(mem.Bodies), "maxConnections", mem.Connections, "heavySlots", budget.HeavySlots())
		if opts.caBundleController {
			err = runCABundleController(ctx, opts, log)
		} else {
			err = run(ctx, opts, mem.Sizes, log)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sops-webhook:", err)
		return 1
	}
	return 0
}
