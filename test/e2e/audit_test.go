package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// TestAudit proves what docs/operations.md says the audit log holds: a
// real kube-apiserver auditing Secrets and ConfigMaps at Request records
// the webhook's patch, and so the plaintext, in the annotation
// patch.webhook.admission.k8s.io/round_0_index_0; with the shipped sample
// policy (manifests/apiserver/audit-policy.yaml) first, followed by a
// catch-all at RequestResponse, nothing in the log holds it.
func TestAudit(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	shipped, err := os.ReadFile(filepath.Join(root, "manifests/apiserver/audit-policy.yaml"))
	require.NoError(t, err)

	work := t.TempDir()
	key := sopskit.NewAgeKey(t, false)
	config := filepath.Join(work, "config.yaml")
	// ConfigMaps are decrypted only where the policy names them.
	grant := "policy:\n  - keys: [audit]\n    namespaces: [\"*\"]\n    kinds: [Secret, ConfigMap]\n"
	require.NoError(t, os.WriteFile(config, append(key.Config("audit"), grant...), 0o600))
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: work, Log: verbose()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })

	mine := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	plain := "PASSWORD=audit-PLAINTEXT-1\n"
	enc := sopskit.SopsEncrypt(t, []byte(plain), "dotenv", mine)
	secrets := func(level string) string {
		return "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: " + level +
			"\n    resources:\n      - group: \"\"\n        resources: [secrets, configmaps]\n"
	}
	for _, tc := range []struct {
		name   string
		policy string
		leaks  bool
	}{
		{"Request for Secrets and ConfigMaps records the plaintext", secrets("Request"), true},
		{"the shipped policy before a RequestResponse catch-all records none", string(shipped) + "  - level: RequestResponse\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			policy, auditLog := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "audit.log")
			require.NoError(t, os.WriteFile(policy, []byte(tc.policy), 0o600))
			cp, err := testbed.StartControlPlaneWith(map[string]string{"audit-policy-file": policy, "audit-log-path": auditLog})
			require.NoError(t, err)
			defer cp.Stop()
			require.NoError(t, cp.RegisterWebhook(ctx, wh.URL, wh.CABundle))
			require.NoError(t, cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}))
			require.NoError(t, cp.WaitForWebhook(ctx, "team-a"))

			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "audited", Namespace: "team-a"}, Data: map[string][]byte{"app.env": enc}}
			require.NoError(t, cp.Client.Create(ctx, sec))
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "audited", Namespace: "team-a"}, Data: map[string]string{"app.env": string(enc)}}
			require.NoError(t, cp.Client.Create(ctx, cm))
			got := &corev1.Secret{}
			require.NoError(t, cp.Client.Get(ctx, client.ObjectKeyFromObject(sec), got))
			require.Equal(t, plain, string(got.Data["app.env"]), "the webhook decrypted the Secret")

			// Both creates are in the log once their mutation is.
			var log string
			require.Eventually(t, func() bool {
				raw, err := os.ReadFile(auditLog)
				log = string(raw)
				return err == nil && strings.Count(log, `"mutation.webhook.admission.k8s.io/round_0_index_0"`) >= 2
			}, 20*time.Second, 200*time.Millisecond, "the audit log records the webhook's mutations")
			leaked := map[string]bool{
				"plaintext":          strings.Contains(log, "audit-PLAINTEXT-1"),
				"base64 of the file": strings.Contains(log, base64.StdEncoding.EncodeToString([]byte(plain))),
			}
			assert.Equal(t, tc.leaks, strings.Contains(log, `"patch.webhook.admission.k8s.io/round_0_index_0"`), "the patch annotation")
			assert.Equal(t, map[string]bool{"plaintext": tc.leaks, "base64 of the file": tc.leaks}, leaked, fmt.Sprintf("what the audit log holds (%d bytes)", len(log)))
		})
	}
}
