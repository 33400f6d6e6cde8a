// Command noop is the benchmarks' baseline: an admission webhook on the same
// controller-runtime webhook server and TLS settings as sops-webhook, whose
// handler allows every request without looking at it. It is the ceiling of
// what this architecture can serve.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

func main() {
	certDir := flag.String("cert-dir", "", "folder with tls.crt and tls.key")
	host := flag.String("host", "127.0.0.1", "listen address")
	port := flag.Int("port", 9443, "HTTPS port")
	health := flag.String("health-probe-bind-address", "", "address of /readyz")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv := webhook.NewServer(webhook.Options{
		Host: *host, Port: *port, CertDir: *certDir,
		// The TLS settings of cmd/webhook (hardenTLS).
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.MinVersion = tls.VersionTLS12; c.NextProtos = []string{"http/1.1"} }},
	})
	srv.Register("/mutate", &webhook.Admission{Handler: admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		return admission.Allowed("")
	})})
	if *health != "" {
		go func() {
			_ = http.ListenAndServe(*health, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }))
		}()
	}
	if err := srv.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "noop:", err)
		os.Exit(1)
	}
}
