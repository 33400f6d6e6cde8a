package sopskit

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Tools are the paths of the test bed's binaries.
type Tools struct {
	// KubebuilderAssets is the folder holding kube-apiserver and etcd.
	KubebuilderAssets string
	Sops              string
	Helm3             string
	Helm4             string
	AgeKeygen         string
	Age               string
	// Promtool is Prometheus' rule checker and rule unit-test runner.
	Promtool string
	// CRDDirs are folders of CustomResourceDefinitions the deployment
	// manifests use: cert-manager's and prometheus-operator's.
	CRDDirs []string
	// KustomizeController is Flux's kustomize-controller, and FluxCRDDirs
	// the folders of its Kustomization CRD and source-controller's source
	// CRDs.
	KustomizeController string
	FluxCRDDirs         []string
	// NodeBin is the folder of the real node's binaries (install.sh node).
	NodeBin string
}

var (
	loadOnce sync.Once
	loaded   Tools
	loadErr  error
)

// RepoRoot returns the repository root: the nearest parent holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Load reads the tool paths that install.sh recorded.
func Load() (Tools, error) {
	loadOnce.Do(func() { loaded, loadErr = load() })
	return loaded, loadErr
}

func load() (Tools, error) {
	cache := os.Getenv("TESTBED_CACHE")
	if cache == "" {
		root, err := RepoRoot()
		if err != nil {
			return Tools{}, err
		}
		cache = filepath.Join(root, ".cache", "testbed")
	}
	f, err := os.Open(filepath.Join(cache, "env"))
	if err != nil {
		return Tools{}, fmt.Errorf("test bed not installed (%w); run: make testbed", err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && !strings.HasPrefix(k, "#") {
			vars[k] = v
		}
	}
	t := Tools{
		KubebuilderAssets: vars["KUBEBUILDER_ASSETS"],
		Sops:              vars["SOPS_BIN"],
		Helm3:             vars["HELM3_BIN"],
		Helm4:             vars["HELM4_BIN"],
		AgeKeygen:         vars["AGE_KEYGEN_BIN"],
		Age:               vars["AGE_BIN"],
		Promtool:          vars["PROMTOOL_BIN"],

		KustomizeController: vars["KUSTOMIZE_CONTROLLER_BIN"],
		NodeBin:             vars["NODE_BIN"],
	}
	if v := vars["CRD_DIRS"]; v != "" {
		t.CRDDirs = strings.Split(v, ":")
	}
	if v := vars["FLUX_CRD_DIRS"]; v != "" {
		t.FluxCRDDirs = strings.Split(v, ":")
	}
	return t, sc.Err()
}

// Need returns the tools, failing t in one line that names the tool and
// says to run make testbed when the test bed is missing or path is not an
// executable file.
func Need(t testing.TB, name string, path func(Tools) string) Tools {
	t.Helper()
	tools, err := Load()
	if err != nil {
		t.Fatalf("this test needs %s from the test bed, which is not installed; run: make testbed", name)
	}
	if p := path(tools); p == "" || !isExecutable(p) {
		t.Fatalf("this test needs %s from the test bed, and %q is not an executable; run: make testbed", name, p)
	}
	return tools
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}
