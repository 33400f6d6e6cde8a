package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// TestMetricsAuth proves the metrics endpoint as the manifests ship it:
// HTTPS, a scraper's token checked with a TokenReview and its right to get
// /metrics with a SubjectAccessReview, by a webhook that runs as its own
// service account with only the shipped RBAC (manifests/base/rbac.yaml).
// Prometheus's service account, bound to the shipped metrics-reader role as
// docs/operations.md says, reads the metrics; another service account, no
// token, and plain HTTP get none.
func TestMetricsAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b := newIdentityBed(ctx, t)
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	admin := filepath.Join(b.work, "admin.kubeconfig")
	require.NoError(t, b.cp.WriteKubeconfig(admin))
	_, err = runKubectl(admin, nil, "apply", "-f", filepath.Join(root, "manifests/base/rbac.yaml"))
	require.NoError(t, err)

	// The webhook's own identity, as in its pod.
	kubeconfig := b.kubeconfigFor(ctx, t, "sops-webhook")

	// Prometheus's service account, bound as the docs say; and a stranger.
	require.NoError(t, b.cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "monitoring"}}))
	for _, sa := range []string{"prometheus", "stranger"} {
		require.NoError(t, b.cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: "monitoring"}}))
	}
	require.NoError(t, b.cp.Client.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "prometheus-sops-webhook-metrics"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "sops-webhook-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "prometheus", Namespace: "monitoring"}},
	}))
	token := func(sa string) string {
		exp := int64(600)
		tr, err := b.kube.CoreV1().ServiceAccounts("monitoring").CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		return tr.Status.Token
	}

	config := filepath.Join(b.work, "metrics-config.yaml")
	key := sopskit.NewAgeKey(t, false)
	require.NoError(t, os.WriteFile(config, key.Config("k"), 0o600))
	if b.bin == "" {
		b.bin, err = testbed.BuildWebhook(b.work)
		require.NoError(t, err)
	}
	wh, err := testbed.StartWebhookWith(ctx, b.bin, testbed.WebhookOptions{
		Config: config, WorkDir: filepath.Join(b.work, "metrics"), Log: verbose(),
		Args: []string{"--metrics-secure=true", "--kubeconfig", kubeconfig},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })

	httpsURL := "https://" + strings.TrimPrefix(wh.MetricsURL, "http://")
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(wh.CABundle))
	scraper := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	get := func(c *http.Client, url, bearer string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		require.NoError(t, err)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}

	for _, tc := range []struct {
		name   string
		client *http.Client
		url    string
		bearer string
		want   int // 0: no HTTP answer at all
	}{
		{"Prometheus's service account reads the metrics", scraper, httpsURL, token("prometheus"), http.StatusOK},
		{"another service account is forbidden", scraper, httpsURL, token("stranger"), http.StatusForbidden},
		{"no token is unauthorized", scraper, httpsURL, "", http.StatusUnauthorized},
		// The TokenReview reports the token's error, which
		// controller-runtime's filter answers with a 500.
		{"a forged token is refused", scraper, httpsURL, "not-a-token", http.StatusInternalServerError},
		{"plain HTTP gets no answer", http.DefaultClient, wh.MetricsURL, token("prometheus"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := get(tc.client, tc.url, tc.bearer)
			if tc.want == 0 {
				require.Error(t, err, "answered %d", code)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, code, body)
			assert.Equal(t, tc.want == http.StatusOK, strings.Contains(body, "sops_webhook_unauthenticated_callers_served"), "metrics in the answer")
		})
	}
}
