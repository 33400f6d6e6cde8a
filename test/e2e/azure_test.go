package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
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
	b := newIdentityBed(ctx, t)
	az, err := standin.StartAzure(b.work, standin.AzureOptions{JWKS: b.jwks, Issuer: b.issuer, Subject: webhookSubject})
	require.NoError(t, err)
	t.Cleanup(func() { _ = az.Close() })
	elsewhere, err := standin.StartConnectionCounter()
	require.NoError(t, err)
	t.Cleanup(func() { _ = elsewhere.Close() })
	tokenFile, jwt := b.tokenFile(ctx, t, "sops-webhook", "api://AzureADTokenExchange")
	wh := b.startWebhook(ctx, t, "azure",
		fmt.Sprintf("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: prod-azure\n    azureKeyVault: {vaultURL: %q, keyName: \"sops-*\"}\n", az.URL),
		append(az.Env(tokenFile), "SSL_CERT_FILE="+az.CAFile)...)

	// Test payloads: sops encrypts for a throwaway age key; its data key is
	// then wrapped with the Key Vault stand-in's key and written in place of
	// the age entry, as sops --azure-kv would write it.
	throwaway := sopskit.NewAgeKey(t, false)
	encrypt := func(t *testing.T, plain, vaultURL, keyName string) []byte {
		doc := sopskit.SopsEncrypt(t, []byte(plain), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{throwaway}})
		enc, err := az.Wrap(keyName, sopskit.DataKeyOf(t, doc, throwaway))
		require.NoError(t, err)
		return sopskit.ReplaceAgeStanza(t, doc, "    azure_kv:\n        - vault_url: "+vaultURL+"\n          name: "+keyName+"\n          version: 0123456789abcdef\n          created_at: \"2026-11-24T00:00:00Z\"\n          enc: "+enc+"\n")
	}

	t.Run("decrypts as the workload identity", func(t *testing.T) {
		require.NoError(t, b.create(ctx, "az-doc", encrypt(t, "password: azure-PLAINTEXT-1\n", az.URL, "sops-app")))
		assert.Equal(t, "password: azure-PLAINTEXT-1\n", b.stored(ctx, t, "az-doc"))
		assert.EqualValues(t, 1, az.Tokens.Load())
		assert.EqualValues(t, 1, az.Decrypts.Load())
	})

	t.Run("a vault URL or key outside the config is never contacted", func(t *testing.T) {
		for name, doc := range map[string][]byte{
			"other-vault": encrypt(t, "password: azure-PLAINTEXT-2\n", "https://"+elsewhere.Addr, "sops-app"),
			"other-key":   encrypt(t, "password: azure-PLAINTEXT-2\n", az.URL, "not-allowed"),
		} {
			err := b.create(ctx, "az-"+name, doc)
			require.Error(t, err, name)
			assert.Contains(t, err.Error(), "no configured key can open it")
		}
		assert.Zero(t, elsewhere.Count.Load())
		assert.EqualValues(t, 1, az.Decrypts.Load())
	})

	t.Run("Key Vault down: a retryable 503 within the deadline; back up: decrypts without a restart", func(t *testing.T) {
		doc := encrypt(t, "password: azure-PLAINTEXT-3\n", az.URL, "sops-app")
		az.SetHanging(true)
		start := time.Now()
		err := b.create(ctx, "az-down", doc)
		elapsed := time.Since(start)
		az.SetHanging(false)
		require.Error(t, err)
		assert.True(t, apierrors.IsServiceUnavailable(err), "a retryable 503, not a denial: %v", err)
		assert.Contains(t, err.Error(), `key "prod-azure": azure key vault decrypt: no answer within`)
		assert.Less(t, elapsed, 8*time.Second)
		require.NoError(t, b.create(ctx, "az-back", doc))
		assert.Equal(t, "password: azure-PLAINTEXT-3\n", b.stored(ctx, t, "az-back"))
	})

	t.Run("logs hold no plaintext or tokens", func(t *testing.T) {
		logs := wh.Logs()
		assert.NotContains(t, logs, "PLAINTEXT")
		assert.NotContains(t, logs, jwt)
	})
}
