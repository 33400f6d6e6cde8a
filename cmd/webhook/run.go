package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
)

// mutatePath is the HTTPS path of the admission endpoint.
const mutatePath = "/mutate"

// run loads the config and keys, then serves the admission endpoint, the
// health probes and the metrics until ctx is cancelled. Logs go to logOut.
func run(ctx context.Context, o options, logOut io.Writer) error {
	log := newLogger(o.logLevel, logOut)
	ctrllog.SetLogger(log)
	ctx = ctrllog.IntoContext(ctx, log)

	cfg, err := loadConfig(o.configFile)
	if err != nil {
		return err
	}
	ring, err := cfg.loadRing()
	if err != nil {
		return fmt.Errorf("config %s: %w", o.configFile, err)
	}
	log.Info("keys loaded", "keys", ring.Names())

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := mutate.NewMetrics(reg)
	if err != nil {
		return err
	}
	handler := mutate.NewHandler(decrypt.New(ring), mutate.WithMetrics(metrics), mutate.WithTimeout(o.decryptTimeout))

	server := webhook.NewServer(webhook.Options{
		Host:    o.host,
		Port:    o.port,
		CertDir: o.certDir,
		TLSOpts: []func(*tls.Config){hardenTLS},
	})
	server.Register(mutatePath, &webhook.Admission{Handler: handler})

	var stopping atomic.Bool
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		<-gctx.Done()
		stopping.Store(true)
		log.Info("shutting down")
		return nil
	})
	g.Go(func() error { return server.Start(gctx) })

	started := server.StartedChecker()
	probes := http.NewServeMux()
	probes.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	probes.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		// Keys are loaded before anything listens, so ready means: the
		// admission endpoint answers TLS and we are not shutting down.
		if stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if err := started(r); err != nil {
			http.Error(w, "admission endpoint not serving yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	g.Go(func() error { return serveHTTP(gctx, "health probes", o.healthAddr, probes, o.shutdownTimeout) })

	if o.metricsAddr != "0" {
		gatherers := prometheus.Gatherers{reg, ctrlmetrics.Registry}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(gatherers, promhttp.HandlerOpts{}))
		g.Go(func() error { return serveHTTP(gctx, "metrics", o.metricsAddr, mux, o.shutdownTimeout) })
	}

	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("stopped")
	return nil
}

// hardenTLS sets TLS 1.2 as the floor and serves HTTP/1.1 only: HTTP/2 is
// off, as controller-runtime advises, against stream-reset floods.
func hardenTLS(c *tls.Config) {
	c.MinVersion = tls.VersionTLS12
	c.NextProtos = []string{"http/1.1"}
}

// serveHTTP serves plain HTTP for probes and metrics on addr until ctx ends,
// then drains for at most timeout.
func serveHTTP(ctx context.Context, what, addr string, h http.Handler, timeout time.Duration) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s: %w", what, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return srv.Shutdown(sctx)
}

// newLogger returns a JSON logger writing to out.
func newLogger(level string, out io.Writer) logr.Logger {
	lvl := zapcore.InfoLevel
	switch level {
	case "debug":
		lvl = zapcore.DebugLevel
	case "error":
		lvl = zapcore.ErrorLevel
	}
	return zap.New(zap.WriteTo(out), zap.JSONEncoder(), zap.Level(lvl), zap.UseDevMode(false))
}
