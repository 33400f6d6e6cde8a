package main

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"path/filepath"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
)

// metricsServer returns the /metrics handler and, with --metrics-secure,
// the TLS configuration to serve it with: the serving certificate of
// --cert-dir, each request's bearer token checked with a TokenReview and
// its GET of /metrics with a SubjectAccessReview (controller-runtime's
// filter, as kubebuilder scaffolds it). The certificate watcher must run
// for as long as the server does; it is nil without --metrics-secure.
func metricsServer(o options, cfg *rest.Config, g prometheus.Gatherer, log logr.Logger) (http.Handler, *tls.Config, *certwatcher.CertWatcher, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	if !o.metricsSecure {
		return mux, nil, nil, nil
	}
	if cfg == nil {
		return nil, nil, nil, errors.New("--metrics-secure needs API access to check scrapers' tokens: run in a cluster or pass --kubeconfig, or pass --metrics-secure=false")
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	filter, err := filters.WithAuthenticationAndAuthorization(cfg, httpClient)
	if err != nil {
		return nil, nil, nil, err
	}
	h, err := filter(log.WithName("metrics"), mux)
	if err != nil {
		return nil, nil, nil, err
	}
	cw, err := certwatcher.New(filepath.Join(o.certDir, "tls.crt"), filepath.Join(o.certDir, "tls.key"))
	if err != nil {
		return nil, nil, nil, err
	}
	t := &tls.Config{GetCertificate: cw.GetCertificate}
	hardenTLS(t)
	return h, t, cw, nil
}

// runWatcher runs cw until ctx ends; a nil cw returns at once.
func runWatcher(ctx context.Context, cw *certwatcher.CertWatcher) error {
	if cw == nil {
		return nil
	}
	return cw.Start(ctx)
}
