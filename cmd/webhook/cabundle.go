package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"

	"github.com/sops-webhook/sops-webhook/pkg/selfcerts"
)

// runCABundleController runs the caBundle controller of self-managed mode
// (--ca-bundle-controller) and its health probes until ctx is cancelled:
// the one identity that writes the webhook configuration, which serves no
// admission request and reads no private key.
func runCABundleController(ctx context.Context, o options, log logr.Logger) error {
	_, kube, err := kubeClient(o.kubeconfig)
	if err != nil {
		return err
	}
	if kube == nil {
		return errors.New("--ca-bundle-controller needs API access: run in a cluster or pass --kubeconfig")
	}
	c, err := selfcerts.NewCABundleController(selfcerts.CABundleOptions{
		Client: kube, Namespace: o.selfCerts.namespace, ConfigMap: o.selfCerts.caBundleConfigMap,
		WebhookConfiguration: o.selfCerts.webhookConfiguration, KeepForeignCAs: o.selfCerts.keepForeignCAs,
		Interval: o.selfCerts.interval, Log: log.WithName("cabundle"),
	})
	if err != nil {
		return err
	}
	log.Info("caBundle controller", "configMap", o.selfCerts.caBundleConfigMap, "webhookConfiguration", o.selfCerts.webhookConfiguration)
	probes := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	probes.HandleFunc("/healthz", ok)
	probes.HandleFunc("/readyz", ok)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.Run(gctx) })
	g.Go(func() error {
		return serveHTTP(gctx, "health probes", o.healthAddr, probes, nil, o.shutdownTimeout, nil)
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("stopped")
	return nil
}
