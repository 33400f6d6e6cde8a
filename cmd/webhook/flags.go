package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/callerauth"
	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/pkg/policy"
	"github.com/sops-webhook/sops-webhook/pkg/selfcerts"
)

// options are the command-line flags (docs/reference.md §4).
type options struct {
	// caBundleController runs only the caBundle controller
	// (--ca-bundle-controller), no admission endpoint.
	caBundleController bool

	configFile     string
	certDir        string
	host           string
	port           int
	metricsAddr    string
	metricsSecure  bool
	healthAddr     string
	logLevel       string
	decryptTimeout time.Duration
	// requestTimeout is the MutatingWebhookConfiguration's timeoutSeconds:
	// a request's body must arrive within it.
	requestTimeout  time.Duration
	shutdownTimeout time.Duration
	shutdownDelay   time.Duration

	// certificates is where the serving certificate comes from:
	// certificatesFiles (mounted, e.g. by cert-manager) or
	// certificatesSelfManaged (package selfcerts).
	certificates string
	selfCerts    selfCertOptions

	// callerAuth is how the webhook knows its caller is the API server
	// (callerauth.Mode*); clientCAFile and clientNames configure
	// callerauth.ModeClientCertificate.
	callerAuth   string
	clientCAFile string
	clientNames  []string

	kubeconfig          string
	cacheSize           int
	cacheTTL            time.Duration
	resultCacheBytes    int
	policyCacheTTL      time.Duration
	configCheckInterval time.Duration
	// generatedKeysSecret and recipientsConfigMap are in --namespace.
	generatedKeysSecret string
	recipientsConfigMap string
	backupsConfigMap    string

	// memory sizes the budgets; flags override parts of it.
	memory     memoryOptions
	budgetWait time.Duration
}

// memoryOptions are the memory limit and the budgets derived from it
// (budget.ForLimit), each overridable by a flag.
type memoryOptions struct {
	// limit is --memory-limit; 0: read $SOPS_WEBHOOK_MEMORY_LIMIT or the cgroup.
	limit int64
	// decrypt and bodies are --decrypt-budget and --body-budget; 0: derived.
	decrypt, bodies int64
	// connections is --max-connections; 0: derived.
	connections int
}

// selfCertOptions configure the self-managed certificate mode.
type selfCertOptions struct {
	namespace            string
	secretName           string
	webhookConfiguration string
	service              string
	hosts                []string
	interval             time.Duration
	// clientName, when set, is the name of the API server's client
	// certificate the webhook issues (selfcerts.Options.ClientName).
	clientName string
	// keepForeignCAs is --ca-bundle-keep-foreign.
	keepForeignCAs bool
	// caBundleConfigMap is --ca-bundle-configmap: where the replicas
	// publish their CAs for the caBundle controller; empty, they write the
	// caBundle themselves.
	caBundleConfigMap string
}

const (
	certificatesFiles       = "files"
	certificatesSelfManaged = "self-managed"
)

// parseFlags parses and validates the command line. Errors name the flag.
func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.configFile, "config", "", "path of the sops-webhook Config file (required)")
	fs.StringVar(&o.certDir, "cert-dir", "", "folder holding tls.crt and tls.key, reloaded when they change (required)")
	fs.StringVar(&o.host, "host", "", "address the admission endpoint listens on (default: all)")
	fs.IntVar(&o.port, "port", 9443, "port of the HTTPS admission endpoint /mutate")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443", "address of the Prometheus /metrics endpoint; 0 disables it")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "serve /metrics over HTTPS with the serving certificate, to scrapers whose bearer token a TokenReview accepts and a SubjectAccessReview allows to get /metrics; needs API access. false: plain HTTP to anyone who reaches the port")
	fs.StringVar(&o.healthAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: info, debug or error")
	fs.DurationVar(&o.decryptTimeout, "decrypt-timeout", mutate.DefaultDecryptTimeout, "longest time one admission request may spend decrypting")
	fs.DurationVar(&o.requestTimeout, "request-timeout", 10*time.Second, "the MutatingWebhookConfiguration's timeoutSeconds: a request's body must arrive within it (the API server has given up by then), and its answer be written within a second more")
	fs.IntVar(&o.memory.connections, "max-connections", 0, "connections the admission endpoint holds open at once; more are closed at once (retryable). Default: derived from the memory limit (docs/operations.md, Sizing)")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 25*time.Second, "longest time to drain requests on SIGTERM")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", 0, "on SIGTERM, how long to keep serving while reporting not ready, so endpoints drop this replica before it stops")
	fs.StringVar(&o.certificates, "certificates", certificatesFiles, `where the serving certificate comes from: "files" in --cert-dir (cert-manager, a mounted Secret), or "self-managed" (the webhook issues it, stores it in --tls-secret and patches the caBundle of --webhook-configuration)`)
	fs.StringVar(&o.callerAuth, "caller-auth", "", `how the webhook knows its caller is the API server: "client-certificate" (only TLS clients with a certificate from --client-ca-file are answered; the default when that flag is set), "network-policy" or "none" (any caller that reaches the port is answered: a NetworkPolicy must keep everything but the API server out, or you accept that any pod can ask for plaintext). Required without --client-ca-file`)
	fs.StringVar(&o.clientCAFile, "client-ca-file", "", "PEM CA certificates that sign the API server's client certificate for this webhook; reloaded when it changes. With --certificates=self-managed and --caller-auth=client-certificate but no file, the webhook issues that certificate itself into --tls-secret and trusts its own CA")
	clientNames := fs.String("client-names", "", "comma-separated names (common name or DNS name) one of which the caller's client certificate must carry, e.g. kube-apiserver; default: any certificate the client CA signed for client authentication")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file for API access (default: in-cluster when in a pod); used by self-managed certificates and by policies with namespaceSelector or requireRBAC")
	fs.IntVar(&o.cacheSize, "data-key-cache-size", keysource.DefaultCacheSize, "how many unwrapped data keys are kept in memory; 0 disables the cache")
	fs.DurationVar(&o.cacheTTL, "data-key-cache-ttl", keysource.DefaultCacheTTL, "how long an unwrapped data key is reused; 0 disables the cache")
	fs.IntVar(&o.resultCacheBytes, "document-cache-bytes", decrypt.DefaultResultCacheBytes, "memory for decrypted documents and parsed values indexes, reused for --data-key-cache-ttl after the policy check; 0 disables it")
	fs.DurationVar(&o.policyCacheTTL, "policy-cache-ttl", policy.DefaultCacheTTL, "how long RBAC decisions and namespace labels are reused")
	fs.DurationVar(&o.configCheckInterval, "config-check-interval", 10*time.Second, "how often the config file and the key files are checked for changes; 0 disables reloading")
	memLimit := fs.String("memory-limit", "", "memory limit to size GOMEMLIMIT and the budgets for, as a quantity (256Mi); default: $"+memoryLimitEnv+" (the Downward API's limits.memory), else the memory cgroup's limit, else "+budget.MiB(budget.DefaultMemoryLimit)+" for the budgets and no GOMEMLIMIT")
	decryptBudget := fs.String("decrypt-budget", "", "bytes of SOPS payload decrypted at once, as a quantity; default: derived from the memory limit (docs/operations.md, Sizing)")
	bodyBudget := fs.String("body-budget", "", fmt.Sprintf("bytes of request bodies past their first %d KiB held at once, as a quantity; default: derived from the memory limit", budget.FreeBodyBytes>>10))
	fs.DurationVar(&o.budgetWait, "budget-wait", budget.DefaultWait, "longest time a request waits for room in a budget before it is refused as busy (retryable)")
	fs.StringVar(&o.selfCerts.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the webhook's namespace, where it keeps generated keys, publishes recipients and, self-managed, its certificates (default $POD_NAMESPACE)")
	fs.StringVar(&o.generatedKeysSecret, "generated-keys-secret", clusterkeys.DefaultSecretName, "Secret of --namespace that holds the keys the webhook generates (config: generate)")
	fs.StringVar(&o.backupsConfigMap, "key-backups-configmap", clusterkeys.DefaultBackupsConfigMapName, "ConfigMap of --namespace where each generation's backups (wrapped for the break-glass recipients, sealed for the break-glass keys) are published, when any are configured")
	fs.StringVar(&o.recipientsConfigMap, "recipients-configmap", clusterkeys.DefaultConfigMapName, "ConfigMap of --namespace where the keys' public recipients, grants and .sops.yaml rules are published, when the webhook has API access; empty: not published")
	fs.StringVar(&o.selfCerts.secretName, "tls-secret", "sops-webhook-tls", "self-managed: Secret holding the CA and serving certificate")
	fs.StringVar(&o.selfCerts.webhookConfiguration, "webhook-configuration", "sops-webhook", "self-managed: MutatingWebhookConfiguration whose caBundle is kept")
	fs.StringVar(&o.selfCerts.service, "service", "sops-webhook", "self-managed: Service name the certificate is issued for")
	hosts := fs.String("tls-hosts", "", "self-managed: extra comma-separated DNS names or IPs for the certificate")
	fs.DurationVar(&o.selfCerts.interval, "cert-check-interval", selfcerts.DefaultInterval, "self-managed: how often the Secret and caBundle are checked")
	fs.StringVar(&o.selfCerts.caBundleConfigMap, "ca-bundle-configmap", "", "self-managed: publish the trusted CAs (no key) in this ConfigMap of --namespace and leave the caBundle to the caBundle controller, so the webhook's identity needs no write access to the webhook configuration; empty: the webhook writes the caBundle itself")
	fs.BoolVar(&o.caBundleController, "ca-bundle-controller", false, "run only the caBundle controller of self-managed mode: copy the CAs the replicas publish in --ca-bundle-configmap into --webhook-configuration's caBundle, under an identity of its own; serves health probes only, needs API access, ignores --config and --cert-dir")
	fs.BoolVar(&o.selfCerts.keepForeignCAs, "ca-bundle-keep-foreign", false, "self-managed: keep CAs that someone else put in the caBundle; by default it holds only the webhook's own CAs")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if o.selfCerts.service != "" && o.selfCerts.namespace != "" {
		svc, ns := o.selfCerts.service, o.selfCerts.namespace
		o.selfCerts.hosts = []string{svc + "." + ns + ".svc", svc + "." + ns + ".svc.cluster.local"}
	}
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			o.selfCerts.hosts = append(o.selfCerts.hosts, h)
		}
	}
	for _, n := range strings.Split(*clientNames, ",") {
		if n = strings.TrimSpace(n); n != "" {
			o.clientNames = append(o.clientNames, n)
		}
	}
	if o.callerAuth == "" && o.clientCAFile != "" {
		o.callerAuth = callerauth.ModeClientCertificate
	}
	// Self-managed, client certificates and no CA of the operator's: the
	// webhook issues the API server's certificate from its own CA.
	if o.callerAuth == callerauth.ModeClientCertificate && o.clientCAFile == "" && o.certificates == certificatesSelfManaged {
		o.selfCerts.clientName = "kube-apiserver"
		if len(o.clientNames) > 0 {
			o.selfCerts.clientName = o.clientNames[0]
		}
		o.clientCAFile = filepath.Join(o.certDir, selfcerts.FileClientCA)
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var errs []error
	for _, q := range []struct {
		flag  string
		value string
		into  *int64
	}{{"--memory-limit", *memLimit, &o.memory.limit}, {"--decrypt-budget", *decryptBudget, &o.memory.decrypt}, {"--body-budget", *bodyBudget, &o.memory.bodies}} {
		if q.value == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.value)
		if err != nil || v.Value() <= 0 {
			errs = append(errs, fmt.Errorf("%s %q is not a positive quantity of bytes", q.flag, q.value))
			continue
		}
		*q.into = v.Value()
	}
	errs = append(errs, o.validate())
	return o, errors.Join(errs...)
}

func (o options) validate() error {
	if o.caBundleController {
		return o.validateCABundleController()
	}
	var errs []error
	if o.configFile == "" {
		errs = append(errs, errors.New("--config is required"))
	}
	switch {
	case o.certDir == "":
		errs = append(errs, errors.New("--cert-dir is required"))
	case o.certificates == certificatesFiles:
		for _, f := range []string{"tls.crt", "tls.key"} {
			if _, err := os.Stat(filepath.Join(o.certDir, f)); err != nil {
				errs = append(errs, fmt.Errorf("--cert-dir: %w", err))
			}
		}
	case o.certificates == certificatesSelfManaged:
		if st, err := os.Stat(o.certDir); err != nil || !st.IsDir() {
			errs = append(errs, fmt.Errorf("--cert-dir %s must be an existing folder the webhook can write", o.certDir))
		}
		if o.selfCerts.namespace == "" {
			errs = append(errs, errors.New("--namespace (or $POD_NAMESPACE) is required with --certificates=self-managed"))
		}
		if o.selfCerts.interval <= 0 {
			errs = append(errs, errors.New("--cert-check-interval must be positive"))
		}
	default:
		errs = append(errs, fmt.Errorf("--certificates %q is not files or self-managed", o.certificates))
	}
	switch o.callerAuth {
	case callerauth.ModeClientCertificate:
		if o.clientCAFile == "" {
			errs = append(errs, errors.New("--caller-auth=client-certificate needs --client-ca-file, or --certificates=self-managed to issue the API server's certificate"))
		}
	case callerauth.ModeNetworkPolicy, callerauth.ModeNone:
		if o.clientCAFile != "" || len(o.clientNames) > 0 {
			errs = append(errs, fmt.Errorf("--client-ca-file and --client-names need --caller-auth=client-certificate, not %q", o.callerAuth))
		}
	case "":
		errs = append(errs, errors.New("--client-ca-file is not set: without it any caller that reaches the port gets plaintext; "+
			"pass --caller-auth=network-policy or --caller-auth=none to accept that knowingly (docs/operations.md, Security model)"))
	default:
		errs = append(errs, fmt.Errorf("--caller-auth %q is not client-certificate, network-policy or none", o.callerAuth))
	}
	if o.cacheSize < 0 || o.cacheTTL < 0 || o.resultCacheBytes < 0 || o.policyCacheTTL < 0 || o.configCheckInterval < 0 {
		errs = append(errs, errors.New("--data-key-cache-size, --data-key-cache-ttl, --policy-cache-ttl and --config-check-interval must not be negative"))
	}
	if o.shutdownDelay < 0 {
		errs = append(errs, errors.New("--shutdown-delay must not be negative"))
	}
	if o.port < 1 || o.port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d is not a TCP port", o.port))
	}
	if o.budgetWait <= 0 || o.budgetWait >= o.decryptTimeout {
		errs = append(errs, fmt.Errorf("--budget-wait must be positive and shorter than --decrypt-timeout (%s)", o.decryptTimeout))
	}
	if o.decryptTimeout <= 0 {
		errs = append(errs, errors.New("--decrypt-timeout must be positive"))
	}
	if o.requestTimeout < o.decryptTimeout {
		errs = append(errs, fmt.Errorf("--request-timeout (%s) must not be shorter than --decrypt-timeout (%s)", o.requestTimeout, o.decryptTimeout))
	}
	if o.memory.connections < 0 {
		errs = append(errs, errors.New("--max-connections must not be negative"))
	}
	switch o.logLevel {
	case "info", "debug", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q is not info, debug or error", o.logLevel))
	}
	return errors.Join(errs...)
}

// validateCABundleController checks the flags --ca-bundle-controller uses.
func (o options) validateCABundleController() error {
	var errs []error
	if o.selfCerts.caBundleConfigMap == "" {
		errs = append(errs, errors.New("--ca-bundle-controller needs --ca-bundle-configmap"))
	}
	if o.selfCerts.namespace == "" {
		errs = append(errs, errors.New("--namespace (or $POD_NAMESPACE) is required with --ca-bundle-controller"))
	}
	if o.selfCerts.interval <= 0 {
		errs = append(errs, errors.New("--cert-check-interval must be positive"))
	}
	return errors.Join(errs...)
}
