package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
)

// TestAzureKeyVault decrypts with Azure Key Vault as the webhook's Workload
// ID: the real Azure SDK presents a service-account token of the test API
// server (audience api://AzureADTokenExchange) to the Entra ID stand-in,
// which verifies it against the API server's OIDC keys, and calls the Key
// Vault stand-in with the access token it got, through the bearer
// challenge.
func TestAzureKeyVault(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, err := testbed.StartControlPlane()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cp.Stop() })
	kube, err := kubernetes.NewForConfig(cp.Config)
	require.NoError(t, err)
	work := t.TempDir()
	require.NoError(t, cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sops-webhook"}}))
	require.NoError(t, cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}))
	require.NoError(t, cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sops-webhook", Namespace: "sops-webhook"}}))

	issuer, jwks, err := testbed.APIServerOIDC(ctx, kube)
	require.NoError(t, err)
	az, err := testbed.StartAzureStandIn(work, testbed.AzureStandInOptions{JWKS: jwks, Issuer: issuer, Subject: "system:serviceaccount:sops-webhook:sops-webhook"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = az.Close() })
	elsewhere, err := testbed.StartConnectionCounter()
	require.NoError(t, err)
	t.Cleanup(func() { _ = elsewhere.Close() })

	exp := int64(3600)
	tr, err := kube.CoreV1().ServiceAccounts("sops-webhook").CreateToken(ctx, "sops-webhook", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"api://AzureADTokenExchange"}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	tokenFile := filepath.Join(work, "azure-token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600))

	config := filepath.Join(work, "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: prod-azure\n    azureKeyVault: {vaultURL: %q, keyName: \"sops-*\"}\n", az.URL)), 0o600))
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{
		Config: config, WorkDir: work, Log: verbose(), Args: []string{"--log-level", "debug"},
		Env: append(az.Env(tokenFile), "SSL_CERT_FILE="+az.CAFile),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })
	require.NoError(t, cp.RegisterWebhook(ctx, wh.URL, wh.CABundle))
	require.NoError(t, cp.WaitForWebhook(ctx, "apps"))

	// Test payloads: sops encrypts for a throwaway age key; its data key is
	// then wrapped with the Key Vault stand-in's key and written in place of
	// the age entry, as sops --azure-kv would write it.
	throwaway := testbed.NewAgeKey(t, false)
	encrypt := func(t *testing.T, plain, vaultURL, keyName string) []byte {
		doc := testbed.SopsEncrypt(t, []byte(plain), "yaml", testbed.Recipients{Age: []testbed.AgeKey{throwaway}})
		enc, err := az.Wrap(keyName, testbed.DataKeyOf(t, doc, throwaway))
		require.NoError(t, err)
		return testbed.ReplaceAgeStanza(t, doc, "    azure_kv:\n        - vault_url: "+vaultURL+"\n          name: "+keyName+"\n          version: 0123456789abcdef\n          created_at: \"2026-11-24T00:00:00Z\"\n          enc: "+enc+"\n")
	}
	create := func(name string, value []byte) error {
		return cp.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps"}, Data: map[string][]byte{"app.yaml": value}})
	}
	stored := func(t *testing.T, name string) string {
		got := &corev1.Secret{}
		require.NoError(t, cp.Client.Get(ctx, client.ObjectKey{Namespace: "apps", Name: name}, got))
		return string(got.Data["app.yaml"])
	}

	t.Run("decrypts as the workload identity", func(t *testing.T) {
		require.NoError(t, create("az-doc", encrypt(t, "password: azure-PLAINTEXT-1\n", az.URL, "sops-app")))
		assert.Equal(t, "password: azure-PLAINTEXT-1\n", stored(t, "az-doc"))
		assert.EqualValues(t, 1, az.Tokens.Load())
		assert.EqualValues(t, 1, az.Decrypts.Load())
	})

	t.Run("a vault URL or key outside the config is never contacted", func(t *testing.T) {
		for name, doc := range map[string][]byte{
			"other-vault": encrypt(t, "password: azure-PLAINTEXT-2\n", "https://"+elsewhere.Addr, "sops-app"),
			"other-key":   encrypt(t, "password: azure-PLAINTEXT-2\n", az.URL, "not-allowed"),
		} {
			err := create("az-"+name, doc)
			require.Error(t, err, name)
			assert.Contains(t, err.Error(), "no configured key can open it")
		}
		assert.Zero(t, elsewhere.Count.Load())
		assert.EqualValues(t, 1, az.Decrypts.Load())
	})

	t.Run("Key Vault down: denied within the deadline; back up: decrypts without a restart", func(t *testing.T) {
		doc := encrypt(t, "password: azure-PLAINTEXT-3\n", az.URL, "sops-app")
		az.SetHanging(true)
		start := time.Now()
		err := create("az-down", doc)
		elapsed := time.Since(start)
		az.SetHanging(false)
		require.Error(t, err)
		assert.Contains(t, err.Error(), `key "prod-azure": azure key vault decrypt: no answer within`)
		assert.Less(t, elapsed, 8*time.Second)
		require.NoError(t, create("az-back", doc))
		assert.Equal(t, "password: azure-PLAINTEXT-3\n", stored(t, "az-back"))
	})

	t.Run("logs hold no plaintext or tokens", func(t *testing.T) {
		logs := wh.Logs()
		assert.NotContains(t, logs, "PLAINTEXT")
		assert.NotContains(t, logs, tr.Status.Token)
	})
}
