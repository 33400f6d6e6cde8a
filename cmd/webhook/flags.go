package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
)

// options are the command-line flags (DESIGN §4.2).
type options struct {
	configFile      string
	certDir         string
	host            string
	port            int
	metricsAddr     string
	healthAddr      string
	logLevel        string
	decryptTimeout  time.Duration
	shutdownTimeout time.Duration
}

// parseFlags parses and validates the command line. Errors name the flag.
func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.configFile, "config", "", "path of the sops-webhook Config file (required)")
	fs.StringVar(&o.certDir, "cert-dir", "", "folder holding tls.crt and tls.key, reloaded when they change (required)")
	fs.StringVar(&o.host, "host", "", "address the admission endpoint listens on (default: all)")
	fs.IntVar(&o.port, "port", 9443, "port of the HTTPS admission endpoint /mutate")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus /metrics endpoint; 0 disables it")
	fs.StringVar(&o.healthAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: info, debug or error")
	fs.DurationVar(&o.decryptTimeout, "decrypt-timeout", mutate.DefaultDecryptTimeout, "longest time one admission request may spend decrypting")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 25*time.Second, "longest time to drain requests on SIGTERM")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return o, o.validate()
}

func (o options) validate() error {
	var errs []error
	if o.configFile == "" {
		errs = append(errs, errors.New("--config is required"))
	}
	if o.certDir == "" {
		errs = append(errs, errors.New("--cert-dir is required"))
	} else {
		for _, f := range []string{"tls.crt", "tls.key"} {
			if _, err := os.Stat(filepath.Join(o.certDir, f)); err != nil {
				errs = append(errs, fmt.Errorf("--cert-dir: %w", err))
			}
		}
	}
	if o.port < 1 || o.port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d is not a TCP port", o.port))
	}
	if o.decryptTimeout <= 0 {
		errs = append(errs, errors.New("--decrypt-timeout must be positive"))
	}
	switch o.logLevel {
	case "info", "debug", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q is not info, debug or error", o.logLevel))
	}
	return errors.Join(errs...)
}
