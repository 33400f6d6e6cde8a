package testbed

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sops-webhook/sops-webhook/certs"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// BuildWebhook builds ./cmd/webhook into dir with the build command of
// `make build` and the Dockerfile (static, -trimpath), and returns the
// binary's path. The tests run the binary that ships, and the image the
// node imports shares its build cache.
func BuildWebhook(dir string) (string, error) { return build(dir, "webhook", "./cmd/webhook") }

// BuildPlugin builds the kubectl plugin ./cmd/kubectl-sops_webhook into dir
// as `make build` does, and returns the binary's path.
func BuildPlugin(dir string) (string, error) {
	return build(dir, "kubectl-sops_webhook", "./cmd/kubectl-sops_webhook")
}

// build builds pkg into dir/name, static and -trimpath.
func build(dir, name, pkg string) (string, error) {
	root, err := sopskit.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", out, pkg)
	cmd.Dir, cmd.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v: %s", pkg, err, b)
	}
	return out, nil
}

// Webhook is the real webhook binary running as a child process on
// loopback, with a certificate from cert-manager's PKI library (NewTLS).
type Webhook struct {
	// URL is the admission endpoint, https://127.0.0.1:PORT/mutate.
	URL string
	// CABundle is the PEM CA the API server trusts for URL.
	CABundle []byte
	// MetricsURL is the Prometheus endpoint.
	MetricsURL string
	// CertDir is the --cert-dir the webhook watches.
	CertDir string
	// ClientCert is the client certificate Client presents: the test
	// bed's API server's.
	ClientCert tls.Certificate
	id         *APIServerClient
	// Addr is the admission endpoint's host:port; ReadyURL its /readyz.
	Addr, ReadyURL string

	cmd  *exec.Cmd
	logs *SyncBuffer
	done chan error

	stopOnce sync.Once
	stopErr  error
}

// StartWebhook runs binary with configFile on free loopback ports, with a
// fresh certificate in workDir/certs, copying its logs to extraLog (if not
// nil) and keeping them for Logs. It returns once /readyz answers.
func StartWebhook(ctx context.Context, binary, configFile, workDir string, extraLog io.Writer, extraArgs ...string) (*Webhook, error) {
	return StartWebhookWith(ctx, binary, WebhookOptions{Config: configFile, WorkDir: workDir, Log: extraLog, Args: extraArgs})
}

// WebhookOptions configure StartWebhookWith.
type WebhookOptions struct {
	// Config is the --config file; WorkDir holds the cert dir and HOME.
	Config, WorkDir string
	// Log, if not nil, receives a copy of the webhook's output.
	Log io.Writer
	// Certs is the serving certificate to write into the cert dir; nil
	// makes a fresh one, unless SelfManaged.
	Certs *certs.Bundle
	// SelfManaged leaves the cert dir empty: the webhook issues its own
	// (pass --certificates=self-managed and its flags in Args).
	SelfManaged bool
	// Args are extra flags. Unless they choose --caller-auth or
	// --client-ca-file, the webhook requires the test bed's API-server
	// client certificate (LoadAPIServerClient); unless they choose
	// --metrics-secure, it serves MetricsURL over plain HTTP.
	Args []string
	// Env is extra environment for the webhook process.
	Env []string
	// Cgroup, if not nil, is the memory cgroup the webhook runs in from
	// its start.
	Cgroup *MemoryCgroup
}

// StartWebhookWith runs binary as o says on free loopback ports and returns
// once /readyz answers.
func StartWebhookWith(ctx context.Context, binary string, o WebhookOptions) (*Webhook, error) {
	certDir := filepath.Join(o.WorkDir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	b := o.Certs
	if b == nil && !o.SelfManaged {
		var err error
		if b, err = testpki.NewTLS([]string{"127.0.0.1", "localhost"}, 24*time.Hour); err != nil {
			return nil, err
		}
	}
	var caBundle []byte
	if b != nil {
		if err := b.WriteDir(certDir); err != nil {
			return nil, err
		}
		caBundle = b.CACert
	}
	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	id, err := LoadAPIServerClient()
	if err != nil {
		return nil, err
	}
	var auth []string
	if !slices.ContainsFunc(o.Args, func(a string) bool {
		return strings.HasPrefix(a, "--caller-auth") || strings.HasPrefix(a, "--client-ca-file")
	}) {
		auth = []string{"--client-ca-file", id.CAFile, "--client-names", APIServerClientName}
	}
	// The tests scrape MetricsURL over plain HTTP, unless they choose.
	if !slices.ContainsFunc(o.Args, func(a string) bool { return strings.HasPrefix(a, "--metrics-secure") }) {
		auth = append(auth, "--metrics-secure=false")
	}
	args := append([]string{
		"--config", o.Config,
		"--cert-dir", certDir,
		"--host", "127.0.0.1",
		"--port", strconv.Itoa(ports[0]),
		"--metrics-bind-address", "127.0.0.1:" + strconv.Itoa(ports[1]),
		"--health-probe-bind-address", "127.0.0.1:" + strconv.Itoa(ports[2]),
	}, append(auth, o.Args...)...)
	w := &Webhook{
		URL:        fmt.Sprintf("https://127.0.0.1:%d/mutate", ports[0]),
		Addr:       fmt.Sprintf("127.0.0.1:%d", ports[0]),
		ReadyURL:   fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[2]),
		CABundle:   caBundle,
		MetricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", ports[1]),
		CertDir:    certDir,
		ClientCert: id.Certificate,
		id:         id,
		logs:       &SyncBuffer{},
		done:       make(chan error, 1),
	}
	extraLog, workDir := o.Log, o.WorkDir
	var out io.Writer = w.logs
	if extraLog != nil {
		out = io.MultiWriter(w.logs, extraLog)
	}
	argv := append([]string{binary}, args...)
	if o.Cgroup != nil {
		argv = o.Cgroup.Wrap(argv...)
	}
	w.cmd = exec.Command(argv[0], argv[1:]...)
	w.cmd.Stdout, w.cmd.Stderr = out, out
	w.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + workDir}, o.Env...)
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { w.done <- w.cmd.Wait() }()

	ready := w.ReadyURL
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-w.done:
			return nil, fmt.Errorf("webhook exited before it was ready: %v\n%s", err, w.Logs())
		default:
		}
		if resp, err := http.Get(ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return w, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = w.Stop()
			return nil, fmt.Errorf("webhook not ready within 30s:\n%s", w.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Metric returns the value of one series (name{labels} as exposed) from
// the webhook's /metrics, or 0 when it is absent.
func (w *Webhook) Metric(series string) (float64, error) {
	resp, err := http.Get(w.MetricsURL)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, nil
}

// PID returns the webhook's process ID.
func (w *Webhook) PID() int { return w.cmd.Process.Pid }

// Logs returns everything the webhook printed so far.
func (w *Webhook) Logs() string { return w.logs.String() }

// Stop sends SIGTERM and waits for a graceful exit; it returns the exit
// error, nil for status 0. Calling it again returns the same result.
func (w *Webhook) Stop() error {
	w.stopOnce.Do(func() { w.stopErr = w.stop() })
	return w.stopErr
}

func (w *Webhook) stop() error {
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case err := <-w.done:
		return err
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
		return fmt.Errorf("webhook did not stop within 30s")
	}
}

// Client returns an HTTPS client that trusts the webhook's CA and presents
// the test bed's API-server client certificate, as the API server does.
func (w *Webhook) Client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: w.TLSConfig()}}
}

// TLSConfig is Client's TLS configuration.
func (w *Webhook) TLSConfig() *tls.Config { return w.id.TLSConfig(w.CABundle) }

// FreePorts returns n distinct free TCP ports on 127.0.0.1.
func FreePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
