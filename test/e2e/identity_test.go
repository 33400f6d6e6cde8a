package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

// identityBed is what the remote key-source tests share: a control plane
// with the webhook's namespace and service account (sops-webhook/
// sops-webhook), an opted-in namespace "apps", and the API server's OIDC
// issuer and keys, which the cloud stand-ins trust.
type identityBed struct {
	cp     *testbed.ControlPlane
	kube   kubernetes.Interface
	work   string
	issuer string
	jwks   func(context.Context) (*jose.JSONWebKeySet, error)
	bin    string
}

// webhookSubject is the webhook's service account as a JWT subject.
const webhookSubject = "system:serviceaccount:sops-webhook:sops-webhook"

func newIdentityBed(ctx context.Context, t *testing.T) *identityBed {
	t.Helper()
	cp, err := testbed.StartControlPlane()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cp.Stop() })
	kube, err := kubernetes.NewForConfig(cp.Config)
	require.NoError(t, err)
	b := &identityBed{cp: cp, kube: kube, work: t.TempDir()}
	require.NoError(t, cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sops-webhook"}}))
	require.NoError(t, cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}))
	b.issuer, b.jwks, err = standin.APIServerOIDC(ctx, kube)
	require.NoError(t, err)
	return b
}

// tokenFile issues a token for service account sa of namespace
// sops-webhook (created if needed) with the audiences, as a projected
// volume would, writes it to a file and returns the path and the token.
func (b *identityBed) tokenFile(ctx context.Context, t *testing.T, sa string, audiences ...string) (string, string) {
	t.Helper()
	err := b.cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: "sops-webhook"}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	exp := int64(3600)
	tr, err := b.kube.CoreV1().ServiceAccounts("sops-webhook").CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	p := filepath.Join(b.work, sa+"-"+randomSuffix(t)+".token")
	require.NoError(t, os.WriteFile(p, []byte(tr.Status.Token), 0o600))
	return p, tr.Status.Token
}

// kubeconfigFor writes a kubeconfig that acts as service account sa of
// namespace sops-webhook with a token of its own, as in its pod, and
// returns its path.
func (b *identityBed) kubeconfigFor(ctx context.Context, t *testing.T, sa string) string {
	t.Helper()
	_, token := b.tokenFile(ctx, t, sa)
	ca := filepath.Join(b.work, "apiserver-ca.crt")
	require.NoError(t, os.WriteFile(ca, b.cp.Config.CAData, 0o600))
	kubeconfig := filepath.Join(b.work, sa+"-"+randomSuffix(t)+".kubeconfig")
	require.NoError(t, os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: u, user: {token: %q}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, b.cp.Config.Host, ca, token), 0o600))
	return kubeconfig
}

// startWebhook runs the webhook with the config text and environment in a
// folder of its own, registers it and waits until the API server calls it.
func (b *identityBed) startWebhook(ctx context.Context, t *testing.T, name, config string, env ...string) *testbed.Webhook {
	t.Helper()
	return b.startWebhookWith(ctx, t, name, config, nil, env)
}

// startWebhookWith is startWebhook with extra flags.
func (b *identityBed) startWebhookWith(ctx context.Context, t *testing.T, name, config string, args, env []string) *testbed.Webhook {
	t.Helper()
	if b.bin == "" {
		var err error
		b.bin, err = testbed.BuildWebhook(b.work)
		require.NoError(t, err)
	}
	dir := filepath.Join(b.work, name)
	require.NoError(t, os.MkdirAll(dir, 0o700))
	path := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(config), 0o600))
	wh, err := testbed.StartWebhookWith(ctx, b.bin, testbed.WebhookOptions{
		Config: path, WorkDir: dir, Log: verbose(), Args: append([]string{"--log-level", "debug"}, args...), Env: env,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })
	b.point(ctx, t, wh)
	return wh
}

// point sends the webhook configuration to wh and waits until the API
// server calls it.
func (b *identityBed) point(ctx context.Context, t *testing.T, wh *testbed.Webhook) {
	t.Helper()
	want, err := testbed.LoadWebhookConfiguration(wh.URL, wh.CABundle)
	require.NoError(t, err)
	live := want.DeepCopy()
	if err := b.cp.Client.Get(ctx, client.ObjectKeyFromObject(want), live); apierrors.IsNotFound(err) {
		require.NoError(t, b.cp.Client.Create(ctx, want))
	} else {
		require.NoError(t, err)
		live.Webhooks = want.Webhooks
		require.NoError(t, b.cp.Client.Update(ctx, live))
	}
	require.NoError(t, b.cp.WaitForWebhook(ctx, "apps"))
}

// create creates a Secret in apps with value under app.yaml.
func (b *identityBed) create(ctx context.Context, name string, value []byte) error {
	return b.cp.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps"}, Data: map[string][]byte{"app.yaml": value}})
}

// stored returns what the API server stored under app.yaml.
func (b *identityBed) stored(ctx context.Context, t *testing.T, name string) string {
	t.Helper()
	got := &corev1.Secret{}
	require.NoError(t, b.cp.Client.Get(ctx, client.ObjectKey{Namespace: "apps", Name: name}, got))
	return string(got.Data["app.yaml"])
}

func randomSuffix(t *testing.T) string {
	return filepath.Base(t.TempDir())
}
