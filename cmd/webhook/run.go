package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/callerauth"
	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
	"github.com/sops-webhook/sops-webhook/pkg/metrics"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/pkg/selfcerts"
)

// mutatePath is the HTTPS path of the admission endpoint.
const mutatePath = "/mutate"

// run loads the config and keys, then serves the admission endpoint, the
// health probes and the metrics until ctx is cancelled, logging to log.
// Decryption and large request bodies are admitted within the budgets of
// mem. It changes nothing process-wide: main does that.
func run(ctx context.Context, o options, mem budget.Sizes, log logr.Logger) error {
	ctx = ctrllog.IntoContext(ctx, log)

	restCfg, kube, err := kubeClient(o.kubeconfig)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	webhookMetrics, err := metrics.New(reg)
	if err != nil {
		return err
	}
	deps := engineDeps{
		kube: kube, cacheSize: o.cacheSize, cacheTTL: o.cacheTTL, resultCacheBytes: o.resultCacheBytes, policyTTL: o.policyCacheTTL, stats: webhookMetrics.KeyStats(),
		// A request holds its Engine for at most its decrypt timeout.
		retireAfter: 2 * o.decryptTimeout,
	}
	if ns := o.selfCerts.namespace; kube != nil && ns != "" {
		deps.generated = &clusterkeys.Store{Secrets: kube.CoreV1().Secrets(ns), Name: o.generatedKeysSecret}
		if o.recipientsConfigMap != "" {
			deps.recipients, deps.recipientsName = kube.CoreV1().ConfigMaps(ns), o.recipientsConfigMap
			deps.backupsName = o.backupsConfigMap
		}
	}
	config, names, err := newReloader(o.configFile, deps, log.WithName("config"))
	if err != nil {
		return err
	}
	config.onReload = webhookMetrics.Reloaded
	log.Info("keys loaded", "keys", names)
	decryptBudget := budget.New(budget.Config{Bytes: mem.Decrypt, Wait: o.budgetWait})
	bodies := budget.NewLane("bodies", "reading", mem.Bodies, 0, o.budgetWait)
	handling := budget.NewLane("heavy", "handling", mem.Bodies, budget.HeavySlots(), o.budgetWait)
	if err := webhookMetrics.WatchLanes(append(decryptBudget.Lanes(), bodies, handling)...); err != nil {
		return err
	}
	handler := mutate.NewHandler(config.Engine, mutate.WithMetrics(webhookMetrics), mutate.WithTimeout(o.decryptTimeout), mutate.WithBudget(decryptBudget), mutate.WithLogger(log.WithName("admission")))

	var certs *selfcerts.Manager
	if o.certificates == certificatesSelfManaged {
		if kube == nil {
			return errors.New("--certificates=self-managed needs API access: run in a cluster or pass --kubeconfig")
		}
		if certs, err = newSelfCerts(o, kube, log); err != nil {
			return err
		}
		// The server needs the files before it starts.
		if err := certs.Bootstrap(ctx); err != nil {
			return fmt.Errorf("self-managed certificates: %w", err)
		}
	}

	// After the certificate files of self-managed mode exist.
	var (
		metricsHandler http.Handler
		metricsTLS     *tls.Config
		metricsCW      *certwatcher.CertWatcher
	)
	if o.metricsAddr != "0" {
		if metricsHandler, metricsTLS, metricsCW, err = metricsServer(o, restCfg, prometheus.Gatherers{reg, ctrlmetrics.Registry}, log); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	callers, err := newCallerAuth(o, reg, log)
	if err != nil {
		return err
	}
	servingCW, err := certwatcher.New(filepath.Join(o.certDir, "tls.crt"), filepath.Join(o.certDir, "tls.key"))
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	admissionTLS := &tls.Config{GetCertificate: servingCW.GetCertificate}
	hardenTLS(admissionTLS)
	if callers != nil {
		callers.Configure(admissionTLS)
	}
	conns := budget.NewConnectionLimiter(mem.Connections)
	if err := webhookMetrics.WatchConnections(conns); err != nil {
		return err
	}
	var stopping atomic.Bool
	mux := http.NewServeMux()
	admissionServer := mutate.NewServer(handler, mutate.Gate{
		Bodies: bodies, Handling: handling, Metrics: webhookMetrics, Deadline: o.requestTimeout,
	})
	mux.Handle(mutatePath, admissionServer)
	admissionAddr := net.JoinHostPort(o.host, strconv.Itoa(o.port))

	// On SIGTERM: report not ready and ask clients to reconnect elsewhere
	// for --shutdown-delay while still serving, then stop the servers.
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	g, gctx := errgroup.WithContext(serveCtx)
	g.Go(func() error {
		select {
		case <-ctx.Done():
		case <-gctx.Done():
		}
		stopping.Store(true)
		admissionServer.Drain()
		log.Info("shutting down", "delay", o.shutdownDelay.String())
		select {
		case <-time.After(o.shutdownDelay):
		case <-gctx.Done():
		}
		stopServing()
		return nil
	})
	g.Go(func() error { return runWatcher(gctx, servingCW) })
	g.Go(func() error {
		return serveHTTP(gctx, "admission endpoint", admissionAddr, mux, admissionTLS, o.shutdownTimeout, conns)
	})
	if certs != nil {
		g.Go(func() error { return certs.Run(gctx) })
	}
	if o.configCheckInterval > 0 {
		g.Go(func() error { return config.run(gctx, o.configCheckInterval) })
		if callers != nil {
			g.Go(func() error { return reloadClientCA(gctx, callers, o.configCheckInterval, log) })
		}
	}

	probes := http.NewServeMux()
	probes.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	probes.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		// Keys and certificates are loaded before anything listens, so
		// ready means: the admission endpoint listens and we are not
		// shutting down.
		if stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		// A TCP connect, not controller-runtime's TLS dial: with client
		// certificates required the probe would be a refused caller.
		c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(r.Context(), "tcp", admissionAddr)
		if err != nil {
			http.Error(w, "admission endpoint not serving yet", http.StatusServiceUnavailable)
			return
		}
		c.Close()
		fmt.Fprintln(w, "ok")
	})
	g.Go(func() error {
		return serveHTTP(gctx, "health probes", o.healthAddr, probes, nil, o.shutdownTimeout, nil)
	})

	if o.metricsAddr != "0" {
		g.Go(func() error { return runWatcher(gctx, metricsCW) })
		g.Go(func() error {
			return serveHTTP(gctx, "metrics", o.metricsAddr, metricsHandler, metricsTLS, o.shutdownTimeout, nil)
		})
	}

	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("stopped")
	return nil
}

// newCallerAuth registers the caller-authentication metrics and returns
// the client-certificate verifier, or nil in the modes that answer any
// caller, which it logs as an error-level warning at every start.
func newCallerAuth(o options, reg prometheus.Registerer, log logr.Logger) (*callerauth.Verifier, error) {
	m, err := callerauth.NewMetrics(reg, o.callerAuth)
	if err != nil {
		return nil, err
	}
	if o.callerAuth != callerauth.ModeClientCertificate {
		log.Error(nil, "the admission endpoint answers callers it cannot authenticate: anything that reaches its port can ask for plaintext",
			"callerAuth", o.callerAuth, "metric", callerauth.UnauthenticatedMetric, "fix", "--client-ca-file (docs/operations.md, Security model)")
		return nil, nil
	}
	v, err := callerauth.New(o.clientCAFile, o.clientNames, m.Refused)
	if err != nil {
		return nil, err
	}
	log.Info("only callers with a client certificate are answered", "clientCAFile", o.clientCAFile, "names", o.clientNames)
	return v, nil
}

// reloadClientCA re-reads the client CA file every interval until ctx
// ends; a file that cannot be used is logged and the CAs before it stay.
func reloadClientCA(ctx context.Context, v *callerauth.Verifier, interval time.Duration, log logr.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		switch changed, err := v.Reload(); {
		case err != nil:
			log.Error(err, "client CA not reloaded; the CAs read before stay in use")
		case changed:
			log.Info("client CA reloaded")
		}
	}
}

// apiCallTimeout bounds every call the webhook makes to the API server.
const apiCallTimeout = 10 * time.Second

// kubeClient returns the config and a client for --kubeconfig, or the
// in-cluster ones when running in a pod, or nils when neither is available.
func kubeClient(kubeconfig string) (*rest.Config, kubernetes.Interface, error) {
	var (
		cfg *rest.Config
		err error
	)
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
	default:
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("Kubernetes client: %w", err)
	}
	cfg.Timeout = apiCallTimeout
	c, err := kubernetes.NewForConfig(cfg)
	return cfg, c, err
}

// newSelfCerts builds the self-managed certificate manager.
func newSelfCerts(o options, kube kubernetes.Interface, log logr.Logger) (*selfcerts.Manager, error) {
	return selfcerts.New(selfcerts.Options{
		Client:               kube,
		Namespace:            o.selfCerts.namespace,
		SecretName:           o.selfCerts.secretName,
		WebhookConfiguration: o.selfCerts.webhookConfiguration,
		Hosts:                o.selfCerts.hosts,
		CertDir:              o.certDir,
		ClientName:           o.selfCerts.clientName,
		Interval:             o.selfCerts.interval,
		KeepForeignCAs:       o.selfCerts.keepForeignCAs,
		PublishTo:            o.selfCerts.caBundleConfigMap,
		Log:                  log.WithName("certificates"),
	})
}

// hardenTLS sets TLS 1.2 as the floor and serves HTTP/1.1 only: HTTP/2 is
// off, as controller-runtime advises, against stream-reset floods.
func hardenTLS(c *tls.Config) {
	c.MinVersion = tls.VersionTLS12
	c.NextProtos = []string{"http/1.1"}
}

// Every server's limits on what a client may hold before its handler runs.
const (
	// readHeaderTimeout bounds the TLS handshake and the request's
	// headers, which the API server sends at once.
	readHeaderTimeout = 5 * time.Second
	// idleTimeout closes a kept-alive connection that sends nothing:
	// net/http's default transport's keep-alive, which the API server's
	// webhook client uses too.
	idleTimeout = 90 * time.Second
)

// serveHTTP serves h on addr until ctx ends, then drains for at most
// timeout: HTTPS with tlsCfg, plain HTTP when it is nil. conns, when not
// nil, caps the connections it holds open.
func serveHTTP(ctx context.Context, what, addr string, h http.Handler, tlsCfg *tls.Config, timeout time.Duration, conns *budget.ConnectionLimiter) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if conns != nil {
		ln = conns.Listen(ln)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    budget.MaxHeaderBytes,
	}
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

// stdLogWriter turns the standard logger's lines into log's: failed TLS
// handshakes, which any client that reaches the port can cause (and
// sops_webhook_caller_refusals_total counts), at debug level, the rest at
// info.
type stdLogWriter struct{ log logr.Logger }

func (w stdLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "TLS handshake error") {
		w.log.V(1).Info(msg)
	} else {
		w.log.Info(msg)
	}
	return len(p), nil
}
