package e2e

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

// TestVault decrypts through the Vault stand-in: the webhook logs in with a
// real service-account token issued by the test API server (TokenRequest),
// which the stand-in verifies with a real TokenReview, as Vault's Kubernetes
// auth method does.
func TestVault(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b := newIdentityBed(ctx, t)
	cp := b.cp
	tokenFile, jwt := b.tokenFile(ctx, t, "sops-webhook")

	vault, err := standin.StartVault(b.work, standin.VaultOptions{
		Review: standin.TokenReviewer(b.kube),
		Roles:  map[string]string{"sops-webhook": webhookSubject},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = vault.Close() })
	elsewhere, err := standin.StartConnectionCounter()
	require.NoError(t, err)
	t.Cleanup(func() { _ = elsewhere.Close() })

	wh := b.startWebhook(ctx, t, "vault", `apiVersion: sops-webhook.io/v1alpha1
kind: Config
keys:
  - name: vault
    vaultTransit:
      address: `+vault.URL+`
      enginePath: transit
      keyName: "app-*"
      caFile: `+vault.CAFile+`
      kubernetesAuth: {role: sops-webhook, tokenFile: `+tokenFile+`}
`,
		// What a careless pod spec could leave around: never used.
		"VAULT_ADDR=http://"+elsewhere.Addr, "VAULT_TOKEN=stolen")

	encrypt := func(t *testing.T, plain string) []byte {
		return sopskit.SopsEncrypt(t, []byte(plain), "yaml", vault.Recipients("app-1"))
	}
	create := func(name string, value []byte) error { return b.create(ctx, name, value) }
	stored := func(t *testing.T, name string) string { return b.stored(ctx, t, name) }

	t.Run("decrypts with the webhook's own Vault login", func(t *testing.T) {
		require.NoError(t, create("vault-doc", encrypt(t, "password: vault-PLAINTEXT-1\n")))
		assert.Equal(t, "password: vault-PLAINTEXT-1\n", stored(t, "vault-doc"))
		assert.EqualValues(t, 1, vault.Logins.Load())
		assert.Zero(t, elsewhere.Count.Load(), "VAULT_ADDR was not used")
	})

	t.Run("SSRF: addresses in the metadata are never contacted", func(t *testing.T) {
		doc := encrypt(t, "password: vault-PLAINTEXT-2\n")
		// vault_address is not covered by the MAC: pointing it elsewhere
		// changes nothing, the configured address is used.
		moved := regexp.MustCompile(`vault_address: \S+`).ReplaceAll(doc, []byte("vault_address: http://"+elsewhere.Addr))
		require.NotEqual(t, doc, moved)
		require.NoError(t, create("moved-address", moved))
		assert.Equal(t, "password: vault-PLAINTEXT-2\n", stored(t, "moved-address"))

		// Keys the config has no source for, naming the listener: an
		// unconfigured Vault engine, an Azure Key Vault URL, an AWS role.
		hcVault := regexp.MustCompile(`(?s)    hc_vault:\n.*?(    lastmodified:)`)
		for name, block := range map[string]string{
			"unconfigured-engine": "    hc_vault:\n        - vault_address: http://" + elsewhere.Addr + "\n          engine_path: evil\n          key_name: app-1\n          created_at: \"2026-01-01T00:00:00Z\"\n          enc: vault:v1:AAAA\n",
			"azure-vault-url":     "    azure_kv:\n        - vault_url: http://" + elsewhere.Addr + "\n          name: k\n          version: \"1\"\n          created_at: \"2026-01-01T00:00:00Z\"\n          enc: AAAA\n",
			"aws-role":            "    kms:\n        - arn: arn:aws:kms:eu-west-1:111122223333:key/k\n          role: arn:aws:iam::111122223333:role/evil\n          aws_profile: evil\n          created_at: \"2026-01-01T00:00:00Z\"\n          enc: AAAA\n",
		} {
			t.Run(name, func(t *testing.T) {
				hostile := hcVault.ReplaceAll(doc, []byte(block+"${1}"))
				require.NotEqual(t, string(doc), string(hostile))
				err := create(name, hostile)
				require.Error(t, err)
				assert.True(t, apierrors.IsForbidden(err), "denied: %v", err)
				assert.Contains(t, err.Error(), "no configured key can open it")
			})
		}
		assert.Zero(t, elsewhere.Count.Load(), "the listener named in payloads got no connection")
	})

	t.Run("Vault down: a retryable 503 within the deadline; back up: decrypts without a restart", func(t *testing.T) {
		doc := encrypt(t, "password: vault-PLAINTEXT-3\n")
		vault.SetHanging(true)
		start := time.Now()
		err := create("while-down", doc)
		elapsed := time.Since(start)
		vault.SetHanging(false)
		require.Error(t, err)
		assert.True(t, apierrors.IsServiceUnavailable(err), "a retryable 503, not a denial: %v", err)
		assert.Contains(t, err.Error(), "the key that opens it could not be used")
		assert.Contains(t, err.Error(), `key "vault": vault transit decrypt: no answer within`)
		assert.Contains(t, err.Error(), "retry it")
		errored, err2 := wh.Metric(`sops_webhook_admission_requests_total{kind="Secret",operation="CREATE",outcome="errored"}`)
		require.NoError(t, err2)
		assert.Positive(t, errored, "the outage is counted as errored")
		unavailable, err2 := wh.Metric(`sops_webhook_decryptions_total{format="yaml",outcome="key_unavailable"}`)
		require.NoError(t, err2)
		assert.Positive(t, unavailable, "and under its own decryption outcome")
		assert.Less(t, elapsed, 6*time.Second, "answered inside the webhook's 10 s timeout")
		assert.NotContains(t, err.Error(), "PLAINTEXT")

		require.NoError(t, create("after-outage", doc))
		assert.Equal(t, "password: vault-PLAINTEXT-3\n", stored(t, "after-outage"))
	})

	t.Run("cache: 100 Secrets from one values file cost one remote decrypt", func(t *testing.T) {
		enc := sopskit.SopsEncrypt(t, []byte("db:\n  password: vault-PLAINTEXT-values\n"), "yaml", vault.Recipients("app-1"))
		token, index := sopskit.ValuesLeaves(t, enc)[0].Value.(string), sopskit.ValuesIndex(t, enc)
		before := vault.Decrypts.Load()
		for i := range 100 {
			require.NoError(t, cp.Client.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: "values-" + strconv.Itoa(i), Namespace: "apps", Annotations: map[string]string{mutate.AnnotationValues: index}},
				Data:       map[string][]byte{"password": []byte(token)},
			}))
		}
		assert.EqualValues(t, 1, vault.Decrypts.Load()-before, "one remote decrypt call for 100 Secrets")
		got := &corev1.Secret{}
		require.NoError(t, cp.Client.Get(ctx, client.ObjectKey{Namespace: "apps", Name: "values-99"}, got))
		assert.Equal(t, "vault-PLAINTEXT-values", string(got.Data["password"]))
	})

	t.Run("logs hold no plaintext, Vault token or service-account token", func(t *testing.T) {
		logs := wh.Logs()
		assert.NotContains(t, logs, "PLAINTEXT")
		assert.NotContains(t, logs, jwt)
		assert.NotContains(t, logs, "hvs.")
		assert.False(t, strings.Contains(logs, vault.RootToken))
	})
}
