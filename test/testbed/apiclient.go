package testbed

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// APIServerClientName is the common name of the client certificate the
// test bed's API servers present to webhooks, and the name the webhooks
// the test bed starts allow (--client-names).
const APIServerClientName = "kube-apiserver"

// APIServerClient is the identity every API server of the test bed
// presents to the webhooks it calls, through the AdmissionConfiguration
// shipped in manifests/apiserver, and that every webhook the test bed
// starts requires.
type APIServerClient struct {
	// CAFile is the PEM CA that signed the certificate: the webhooks'
	// --client-ca-file.
	CAFile string
	// CAPEM is CAFile's content.
	CAPEM []byte
	// AdmissionConfig is the --admission-control-config-file of the test
	// bed's API servers.
	AdmissionConfig string
	// Certificate is the client certificate and key, for test clients
	// that stand in for the API server.
	Certificate tls.Certificate
}

var (
	apiClientOnce sync.Once
	apiClient     *APIServerClient
	apiClientErr  error
)

// LoadAPIServerClient returns the test process's API-server identity,
// made on first use in a folder of its own: a fresh CA, a client
// certificate it signs for APIServerClientName, a kubeconfig that hands it
// to every webhook ('*'), and manifests/apiserver's AdmissionConfiguration
// pointed at that kubeconfig.
func LoadAPIServerClient() (*APIServerClient, error) {
	apiClientOnce.Do(func() { apiClient, apiClientErr = newAPIServerClient() })
	return apiClient, apiClientErr
}

func newAPIServerClient() (*APIServerClient, error) {
	dir, err := os.MkdirTemp("", "testbed-apiserver-client-")
	if err != nil {
		return nil, err
	}
	b, err := testpki.NewClientTLS(APIServerClientName, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("API server client certificate: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "client-ca.crt"), b.CACert, 0o600); err != nil {
		return nil, err
	}
	admission, err := WriteAdmissionConfig(dir, b.Cert, b.Key)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(b.Cert, b.Key)
	if err != nil {
		return nil, err
	}
	return &APIServerClient{
		CAFile:          filepath.Join(dir, "client-ca.crt"),
		CAPEM:           b.CACert,
		AdmissionConfig: admission,
		Certificate:     pair,
	}, nil
}

// WriteAdmissionConfig writes into dir the client certificate and key
// (PEM), a kubeconfig that hands them to every webhook ('*'), and
// manifests/apiserver's AdmissionConfiguration pointed at it, whose path it
// returns: kube-apiserver's --admission-control-config-file.
func WriteAdmissionConfig(dir string, certPEM, keyPEM []byte) (string, error) {
	kubeconfig := filepath.Join(dir, "webhook-kubeconfig.yaml")
	files := map[string][]byte{"client.crt": certPEM, "client.key": keyPEM}
	files["webhook-kubeconfig.yaml"] = fmt.Appendf(nil, `apiVersion: v1
kind: Config
users:
  - name: '*'
    user:
      client-certificate: %s
      client-key: %s
`, filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	admission, err := shippedAdmissionConfig(kubeconfig)
	if err != nil {
		return "", err
	}
	files["admission-configuration.yaml"] = admission
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return "", err
		}
	}
	return filepath.Join(dir, "admission-configuration.yaml"), nil
}

// TLSConfig returns a client TLS configuration that trusts the PEM CAs of
// caPEM and presents Certificate, as the API server does.
func (c *APIServerClient) TLSConfig(caPEM []byte) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{c.Certificate}}
}

// shippedAdmissionConfig returns manifests/apiserver's
// AdmissionConfiguration with its kubeConfigFile set to kubeconfig; it
// fails if the shipped file no longer names one.
func shippedAdmissionConfig(kubeconfig string) ([]byte, error) {
	root, err := sopskit.RepoRoot()
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(root, "manifests", "apiserver", "admission-configuration.yaml"))
	if err != nil {
		return nil, err
	}
	var cfg map[string]any
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		return nil, err
	}
	n := 0
	plugins, _ := cfg["plugins"].([]any)
	for _, p := range plugins {
		c, _ := p.(map[string]any)["configuration"].(map[string]any)
		if c != nil && c["kubeConfigFile"] != nil && strings.HasSuffix(fmt.Sprint(c["kind"]), "WebhookAdmissionConfiguration") {
			c["kubeConfigFile"] = kubeconfig
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("manifests/apiserver/admission-configuration.yaml names no webhook kubeConfigFile")
	}
	return yaml.Marshal(cfg)
}
