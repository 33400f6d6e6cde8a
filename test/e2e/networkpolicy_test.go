package e2e

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/test/testbed/node"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// networkPolicy proves the shipped NetworkPolicy on the node, enforced by
// a real implementation (kube-router's firewall): the self-managed overlay
// with the caller-auth-network-policy component, its placeholder replaced
// by the node's addresses as the kubeadm recipe says. A pod on the node
// (the pause image, probed from inside its network namespace) reaches
// neither the webhook port nor the metrics port; the API server's writes
// are still decrypted; a pod in the namespace "monitoring" scrapes the
// metrics with its token. With the policy deleted the same pod reaches the
// webhook port, so the probe can fail.
func (b *podsBed) networkPolicy(t *testing.T) {
	ctx := context.Background()
	require.NoError(t, b.n.StartNetworkPolicy(ctx))
	b.prepareNamespace(t)
	in := kustomizeInstall
	in.name = "network-policy"
	dir := b.overlay(t, "manifests/overlays/self-managed", fmt.Sprintf(`components: [%s]
patches:
  - target: {kind: NetworkPolicy, name: sops-webhook}
    patch: |-
      - op: replace
        path: /spec/ingress/0/from
        value: [{ipBlock: {cidr: %s/32}}, {ipBlock: {cidr: %s/32}}]
`, b.relToRepo(t, "manifests/components/caller-auth-network-policy"), b.n.NS.NodeIP, node.BridgeIP))
	b.kubectl(t, nil, "apply", "-k", dir)
	b.rolledOut(t, in)
	b.encryptForInstall(t, in)
	webhooks := b.pods(t, in)
	require.Len(t, webhooks, 2)
	b.createDecrypted(t, "network-policy-before", b.doc, b.plain)

	for _, ns := range []string{"monitoring", "intruders"} {
		b.kubectl(t, nil, "create", "namespace", ns)
	}
	attacker := b.probePod(ctx, t, "intruders", "attacker")
	prometheus := b.probePod(ctx, t, "monitoring", "prometheus")
	token := b.metricsToken(ctx, t)

	for _, p := range webhooks {
		webhookAddr := net.JoinHostPort(p.Status.PodIP, "9443")
		metricsAddr := net.JoinHostPort(p.Status.PodIP, "8443")
		require.Eventually(t, func() bool { return !reaches(attacker, webhookAddr) }, time.Minute, time.Second,
			"%s: the policy never applied; kube-router:\n%s", p.Name, b.n.Log("kube-router"))
		assert.False(t, reaches(attacker, metricsAddr), "%s: a pod outside monitoring reaches the metrics port", p.Name)
		assert.True(t, reaches(prometheus, metricsAddr), "%s: Prometheus's namespace reaches the metrics port", p.Name)
		assert.False(t, reaches(prometheus, webhookAddr), "%s: the monitoring namespace reaches the webhook port", p.Name)
		code, body := scrapeFrom(t, prometheus, metricsAddr, token)
		assert.Equal(t, "200", code, "%s: Prometheus scrapes with its token", p.Name)
		assert.Contains(t, body, "sops_webhook_unauthenticated_callers_served", p.Name)
	}
	b.createDecrypted(t, "network-policy-after", b.doc, b.plain)

	t.Run("without the policy the same pod reaches the webhook port", func(t *testing.T) {
		b.kubectl(t, nil, "-n", webhookNS, "delete", "networkpolicy", "sops-webhook")
		for _, p := range webhooks {
			addr := net.JoinHostPort(p.Status.PodIP, "9443")
			assert.Eventually(t, func() bool { return reaches(attacker, addr) }, time.Minute, time.Second, p.Name)
		}
	})

	for _, ns := range []string{"monitoring", "intruders"} {
		b.kubectl(t, nil, "delete", "namespace", ns, "--wait=false")
	}
	b.kubectl(t, nil, "delete", "-k", dir, "--wait", "--timeout=3m", "--ignore-not-found")
	b.gone(t, in)
	b.deleteNamespace(t)
}

// relToRepo is path of the repository relative to the folder overlay
// writes for manifests/overlays/self-managed.
func (b *podsBed) relToRepo(t *testing.T, path string) string {
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	rel, err := filepath.Rel(filepath.Join(b.work, strings.ReplaceAll("manifests/overlays/self-managed", "/", "-")), filepath.Join(root, path))
	require.NoError(t, err)
	return rel
}

// probePod runs the pause image as pod name in ns and returns the PID of
// its container, whose network namespace the probes enter.
func (b *podsBed) probePod(ctx context.Context, t *testing.T, ns, name string) int {
	t.Helper()
	b.kubectl(t, nil, "-n", ns, "run", name, "--image", node.PauseImage, "--image-pull-policy", "Never", "--restart", "Never")
	var pod corev1.Pod
	require.Eventually(t, func() bool {
		return b.n.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &pod) == nil &&
			pod.Status.Phase == corev1.PodRunning && len(pod.Status.ContainerStatuses) > 0
	}, 2*time.Minute, time.Second, "pod %s/%s runs", ns, name)
	pid, err := b.n.ContainerPID(ctx, pod.Status.ContainerStatuses[0].ContainerID)
	require.NoError(t, err)
	return pid
}

// reaches reports whether a TCP connection from the network namespace of
// pid to addr is accepted within 3 seconds.
func reaches(pid int, addr string) bool {
	host, port, _ := net.SplitHostPort(addr)
	return exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "--",
		"timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/"+host+"/"+port).Run() == nil
}

// scrapeFrom GETs https://addr/metrics from the network namespace of pid
// with token, and returns the status code and the body.
func scrapeFrom(t *testing.T, pid int, addr, token string) (string, string) {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "--",
		"curl", "-sk", "--max-time", "5", "-H", "Authorization: Bearer "+token, "-w", "\n%{http_code}", "https://"+addr+"/metrics").Output()
	require.NoError(t, err)
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndex(s, "\n")
	return s[i+1:], s[:max(i, 0)]
}

// metricsToken binds monitoring/prometheus to the shipped metrics-reader
// role, as docs/operations.md says, and returns a token of it.
func (b *podsBed) metricsToken(ctx context.Context, t *testing.T) string {
	t.Helper()
	b.kubectl(t, nil, "-n", "monitoring", "create", "serviceaccount", "prometheus")
	b.kubectl(t, nil, "create", "clusterrolebinding", "prometheus-sops-webhook", "--clusterrole", "sops-webhook-metrics-reader", "--serviceaccount", "monitoring:prometheus")
	t.Cleanup(func() {
		_, _ = runKubectl(b.n.Kubeconfig, nil, "delete", "clusterrolebinding", "prometheus-sops-webhook")
	})
	kube, err := kubernetes.NewForConfig(b.n.Config)
	require.NoError(t, err)
	exp := int64(600)
	tr, err := kube.CoreV1().ServiceAccounts("monitoring").CreateToken(ctx, "prometheus", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	return tr.Status.Token
}
