package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/test/testbed/node"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// TestNode starts the test bed's real node and runs a pod on it: the node
// registers and is Ready, a pod of the sandbox image is scheduled and runs,
// kube-proxy programs the kubernetes Service, and Stop leaves no network
// namespace, cgroup or process behind. TestRealPods builds on it.
func TestNode(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs a real node; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n, err := node.StartNode(ctx, t.TempDir())
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = n.Stop()
		}
	})

	kubectl := func(args ...string) string {
		out, err := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", n.Kubeconfig}, args...)...).CombinedOutput()
		require.NoError(t, err, "kubectl %s: %s", strings.Join(args, " "), out)
		return string(out)
	}
	kubectl("run", "sleeper", "--image", node.PauseImage, "--image-pull-policy", "Never", "--restart", "Never")
	require.Eventually(t, func() bool {
		out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", n.Kubeconfig, "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}").Output()
		return err == nil && string(out) == "Running"
	}, 2*time.Minute, time.Second, "the pod runs")
	ip := kubectl("get", "pod", "sleeper", "-o", "jsonpath={.status.podIP}")
	assert.True(t, strings.HasPrefix(ip, "10.232.0."), "the pod is on the node's bridge: %s", ip)

	// kube-proxy DNATs the `kubernetes` Service inside the namespace: pods
	// reach the API server through its ClusterIP, as on a real node.
	tools, err := sopskit.Load()
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.NS.Name, filepath.Join(tools.NodeBin, "iptables"), "-t", "nat", "-S", "KUBE-SERVICES").Output()
		return err == nil && strings.Contains(string(out), "-d "+node.APIServiceIP+"/32")
	}, time.Minute, time.Second, "kube-proxy programs the kubernetes Service; its log:\n%s", n.Log("kube-proxy"))

	ns := n.NS.Name
	require.NoError(t, n.Stop())
	stopped = true
	list, err := exec.Command("ip", "netns", "list").CombinedOutput()
	require.NoError(t, err)
	assert.NotContains(t, string(list), ns, "no network namespace left")
	left, err := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns))
	require.NoError(t, err)
	assert.Empty(t, left, "no cgroup left")
	out, _ := exec.Command("pgrep", "-f", tools.NodeBin).Output()
	assert.Empty(t, strings.TrimSpace(string(out)), "no process of the node's binaries left")
}
