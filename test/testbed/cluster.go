package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// ControlPlane is a real kube-apiserver and etcd started by envtest.
type ControlPlane struct {
	env    *envtest.Environment
	Config *rest.Config
	Client client.Client
}

// StartControlPlane starts kube-apiserver and etcd from the test bed. The
// API server presents the test bed's client certificate
// (LoadAPIServerClient) to every webhook it calls.
func StartControlPlane() (*ControlPlane, error) {
	return StartControlPlaneWith(nil)
}

// StartControlPlaneWith is StartControlPlane with extra kube-apiserver
// flags (name without dashes, value).
func StartControlPlaneWith(flags map[string]string) (*ControlPlane, error) {
	tools, err := sopskit.Load()
	if err != nil {
		return nil, err
	}
	id, err := LoadAPIServerClient()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{BinaryAssetsDirectory: tools.KubebuilderAssets}
	env.ControlPlane.APIServer = &envtest.APIServer{}
	args := env.ControlPlane.APIServer.Configure().Set("admission-control-config-file", id.AdmissionConfig)
	for k, v := range flags {
		args.Set(k, v)
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start control plane from %s: %w", tools.KubebuilderAssets, err)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &ControlPlane{env: env, Config: cfg, Client: c}, nil
}

// Stop stops the API server and etcd.
func (cp *ControlPlane) Stop() error { return cp.env.Stop() }

// WriteKubeconfig writes a kubeconfig for an admin user to path.
func (cp *ControlPlane) WriteKubeconfig(path string) error {
	return WriteKubeconfig(cp.env, path, envtest.User{Name: "admin", Groups: []string{"system:masters"}})
}

// WriteKubeconfig writes a kubeconfig for user u of env's API server to path.
func WriteKubeconfig(env *envtest.Environment, path string, u envtest.User) error {
	user, err := env.AddUser(u, nil)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	return os.WriteFile(path, kc, 0o600)
}

// LoadWebhookConfiguration reads the project's MutatingWebhookConfiguration
// from manifests/base and points every webhook's clientConfig at url, trusted
// through caBundle. Nothing else is changed.
func LoadWebhookConfiguration(url string, caBundle []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	root, err := sopskit.RepoRoot()
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(root, "manifests", "base", "mutatingwebhookconfiguration.yaml"))
	if err != nil {
		return nil, err
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(raw, &mwc); err != nil {
		return nil, err
	}
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caBundle}
	}
	return &mwc, nil
}

// RegisterWebhook creates the project's MutatingWebhookConfiguration pointed
// at url.
func (cp *ControlPlane) RegisterWebhook(ctx context.Context, url string, caBundle []byte) error {
	mwc, err := LoadWebhookConfiguration(url, caBundle)
	if err != nil {
		return err
	}
	return cp.Client.Create(ctx, mwc)
}

// WaitForWebhook creates probe Secrets in namespace, which must be opted in,
// until the API server calls the webhook (registration takes effect
// asynchronously) or ctx or 30 seconds run out. The probe holds a malformed
// token, so the webhook denies it and nothing is stored.
func (cp *ControlPlane) WaitForWebhook(ctx context.Context, namespace string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	probe := []byte("x: ENC[AES256_GCM,data:Zm9v,iv:YmFy,tag:YmF6,type:str]")
	for {
		err := cp.Client.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: namespace},
			Data:       map[string][]byte{"v": probe},
		})
		// The webhook's own denial, not the API server's "failed calling
		// webhook" (which also names it).
		if err != nil && strings.Contains(err.Error(), "sops-webhook: cannot decrypt") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the API server never got an answer from the webhook: last result %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
