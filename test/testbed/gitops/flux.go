package gitops

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/test/testbed"
)

// SourceControllerStandIn plays Flux source-controller's part for a real
// kustomize-controller, the way Flux's own controller tests do: it serves
// artifacts (gzipped tarballs) over HTTP on loopback and publishes each one
// in a GitRepository's status, with its URL, revision and digest. It
// clones nothing: the test hands it the files of each revision.
type SourceControllerStandIn struct {
	c   client.Client
	srv *http.Server
	url string

	mu    sync.Mutex
	files map[string][]byte
}

// StartSourceControllerStandIn serves artifacts on a loopback port.
func StartSourceControllerStandIn(c client.Client) (*SourceControllerStandIn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &SourceControllerStandIn{c: c, url: "http://" + ln.Addr().String(), files: map[string][]byte{}}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *SourceControllerStandIn) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	b, ok := s.files[r.URL.Path]
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write(b)
}

// Stop stops serving.
func (s *SourceControllerStandIn) Stop() error { return s.srv.Close() }

// Publish packs files (path in the repository → content) as the artifact of
// a new revision and sets it as the status of GitRepository namespace/name,
// creating the object first if needed. It returns the revision.
func (s *SourceControllerStandIn) Publish(ctx context.Context, namespace, name string, files map[string][]byte) (string, error) {
	tgz, err := artifactTarball(files)
	if err != nil {
		return "", err
	}
	commit := sha1.Sum(tgz)
	revision := "main@sha1:" + hex.EncodeToString(commit[:])
	sum := sha256.Sum256(tgz)
	path := fmt.Sprintf("/gitrepository/%s/%s/%s.tar.gz", namespace, name, hex.EncodeToString(commit[:]))
	s.mu.Lock()
	s.files[path] = tgz
	s.mu.Unlock()

	repo := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "source.toolkit.fluxcd.io/v1",
		"kind":       "GitRepository",
		"metadata":   map[string]any{"name": name, "namespace": namespace},
		"spec": map[string]any{
			"url":      "https://git.example.com/platform/" + name + ".git",
			"interval": "10m",
			"ref":      map[string]any{"branch": "main"},
		},
	}}
	if err := s.c.Patch(ctx, repo, client.Apply, client.FieldOwner("source-controller-stand-in"), client.ForceOwnership); err != nil {
		return "", fmt.Errorf("apply GitRepository %s: %w", name, err)
	}
	now := metav1.Now().UTC().Format(time.RFC3339)
	status := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "source.toolkit.fluxcd.io/v1",
		"kind":       "GitRepository",
		"metadata":   map[string]any{"name": name, "namespace": namespace},
		"status": map[string]any{
			"observedGeneration": repo.GetGeneration(),
			"conditions": []any{map[string]any{
				"type": "Ready", "status": "True", "reason": "Succeeded",
				"message": "stored artifact for revision '" + revision + "'", "lastTransitionTime": now,
			}},
			"artifact": map[string]any{
				"path":           path,
				"url":            s.url + path,
				"revision":       revision,
				"digest":         "sha256:" + hex.EncodeToString(sum[:]),
				"lastUpdateTime": now,
				"size":           int64(len(tgz)),
			},
		},
	}}
	if err := s.c.Status().Patch(ctx, status, client.Apply, client.FieldOwner("source-controller-stand-in"), client.ForceOwnership); err != nil {
		return "", fmt.Errorf("publish the artifact of GitRepository %s: %w", name, err)
	}
	return revision, nil
}

// artifactTarball packs files into a gzipped tarball, in a stable order.
func artifactTarball(files map[string][]byte) ([]byte, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(files[n]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// InstallCRDs creates the CustomResourceDefinitions of the YAML files in
// dirs and waits until they are served.
func InstallCRDs(ctx context.Context, c client.Client, dirs []string) error {
	var names []string
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			return err
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := yaml.Unmarshal(b, crd); err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			if err := c.Create(ctx, crd); err != nil {
				return fmt.Errorf("create %s: %w", crd.Name, err)
			}
			names = append(names, crd.Name)
		}
	}
	for _, n := range names {
		for {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := c.Get(ctx, client.ObjectKey{Name: n}, crd); err != nil {
				return err
			}
			established := false
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					established = true
				}
			}
			if established {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not established: %w", n, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// KustomizeController is Flux's real kustomize-controller, built by the test
// bed, running as a host process against the test bed's API server.
type KustomizeController struct {
	cmd  *exec.Cmd
	logs *testbed.SyncBuffer
	done chan struct{}
}

// StartKustomizeController starts the controller with kubeconfig, its
// metrics and health endpoints on loopback, no leader election and no
// remote bases. Its log (JSON lines) is kept, and copied to echo if set.
func StartKustomizeController(binary, kubeconfig string, echo io.Writer) (*KustomizeController, error) {
	ports, err := testbed.FreePorts(2)
	if err != nil {
		return nil, err
	}
	k := &KustomizeController{logs: &testbed.SyncBuffer{}, done: make(chan struct{})}
	k.cmd = exec.Command(binary,
		fmt.Sprintf("--metrics-addr=127.0.0.1:%d", ports[0]),
		fmt.Sprintf("--health-addr=127.0.0.1:%d", ports[1]),
		"--no-remote-bases=true",
		"--log-level=debug",
		"--log-encoding=json",
	)
	k.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "RUNTIME_NAMESPACE=flux-system")
	var out io.Writer = k.logs
	if echo != nil {
		out = io.MultiWriter(k.logs, echo)
	}
	k.cmd.Stdout, k.cmd.Stderr = out, out
	if err := k.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kustomize-controller: %w", err)
	}
	go func() { _ = k.cmd.Wait(); close(k.done) }()
	return k, nil
}

// Logs returns what the controller logged so far.
func (k *KustomizeController) Logs() string { return k.logs.String() }

// Stop stops the controller (SIGTERM, then SIGKILL after 10 s).
func (k *KustomizeController) Stop() error {
	_ = k.cmd.Process.Signal(os.Interrupt)
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.done
	}
	return nil
}
