package e2e

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

const gcpKeyID = "projects/p/locations/global/keyRings/r/cryptoKeys/app"

// TestGCPKMS decrypts with Cloud KMS as the webhook's workload identity:
// application default credentials from a workload identity federation
// configuration whose subject token is a service-account token of the test
// API server. The real Google client libraries exchange it at the STS
// stand-in, which verifies it against the API server's OIDC keys, and call
// the Cloud KMS gRPC stand-in with the access token they got.
func TestGCPKMS(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b := newIdentityBed(ctx, t)
	gcp, err := standin.StartGCP(b.work, standin.GCPOptions{JWKS: b.jwks, Issuer: b.issuer, Subject: webhookSubject})
	require.NoError(t, err)
	t.Cleanup(func() { _ = gcp.Close() })
	tokenFile, jwt := b.tokenFile(ctx, t, "sops-webhook", gcp.JWTAudience)
	credFile, err := gcp.CredentialConfig(b.work, tokenFile)
	require.NoError(t, err)
	wh := b.startWebhook(ctx, t, "gcp",
		fmt.Sprintf("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: prod-gcp\n    gcpKms: {resourceID: \"projects/p/locations/global/keyRings/r/cryptoKeys/*\", endpoint: %q}\n", gcp.KMSEndpoint),
		// Application default credentials, and the stand-ins' CA as the
		// only trusted root.
		"GOOGLE_APPLICATION_CREDENTIALS="+credFile, "SSL_CERT_FILE="+gcp.CAFile)

	// Test payloads: sops encrypts for a throwaway age key; its data key is
	// then wrapped by the Cloud KMS stand-in and written in place of the age
	// entry, exactly as sops --gcp-kms would write it.
	kmsClient := gcpKMSClient(t, gcp)
	throwaway := sopskit.NewAgeKey(t, false)
	encrypt := func(t *testing.T, plain, resourceID string) []byte {
		doc := sopskit.SopsEncrypt(t, []byte(plain), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{throwaway}})
		callCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+gcp.AdminToken())
		resp, err := kmsClient.Encrypt(callCtx, &kmspb.EncryptRequest{Name: resourceID, Plaintext: sopskit.DataKeyOf(t, doc, throwaway)})
		require.NoError(t, err)
		return sopskit.ReplaceAgeStanza(t, doc, "    gcp_kms:\n        - resource_id: "+resourceID+"\n          created_at: \"2026-11-24T00:00:00Z\"\n          enc: "+base64.StdEncoding.EncodeToString(resp.Ciphertext)+"\n")
	}

	t.Run("decrypts as the workload identity", func(t *testing.T) {
		require.NoError(t, b.create(ctx, "gcp-doc", encrypt(t, "password: gcp-PLAINTEXT-1\n", gcpKeyID)))
		assert.Equal(t, "password: gcp-PLAINTEXT-1\n", b.stored(ctx, t, "gcp-doc"))
		assert.EqualValues(t, 1, gcp.Exchanges.Load(), "one token exchange")
		assert.EqualValues(t, 1, gcp.Decrypts.Load())
	})

	t.Run("a resource ID outside the allow-list is not contacted", func(t *testing.T) {
		before := gcp.Decrypts.Load()
		err := b.create(ctx, "gcp-other", encrypt(t, "password: gcp-PLAINTEXT-2\n", "projects/other/locations/global/keyRings/r/cryptoKeys/app"))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no configured key can open it")
		assert.Equal(t, before, gcp.Decrypts.Load())
	})

	t.Run("KMS down: a retryable 503 within the deadline; back up: decrypts without a restart", func(t *testing.T) {
		doc := encrypt(t, "password: gcp-PLAINTEXT-3\n", gcpKeyID)
		gcp.SetHanging(true)
		start := time.Now()
		err := b.create(ctx, "gcp-down", doc)
		elapsed := time.Since(start)
		gcp.SetHanging(false)
		require.Error(t, err)
		assert.True(t, apierrors.IsServiceUnavailable(err), "a retryable 503, not a denial: %v", err)
		assert.Contains(t, err.Error(), `key "prod-gcp": gcp kms decrypt: no answer within`)
		assert.Less(t, elapsed, 8*time.Second)
		require.NoError(t, b.create(ctx, "gcp-back", doc))
		assert.Equal(t, "password: gcp-PLAINTEXT-3\n", b.stored(ctx, t, "gcp-back"))
	})

	t.Run("logs hold no plaintext or tokens", func(t *testing.T) {
		logs := wh.Logs()
		assert.NotContains(t, logs, "PLAINTEXT")
		assert.NotContains(t, logs, jwt)
		assert.NotContains(t, logs, "ya29.")
	})
}

// gcpKMSClient is a raw gRPC Cloud KMS client to the stand-in, trusting its
// CA, for making test payloads.
func gcpKMSClient(t *testing.T, gcp *standin.GCP) kmspb.KeyManagementServiceClient {
	t.Helper()
	pem, err := os.ReadFile(gcp.CAFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	conn, err := grpc.NewClient(gcp.KMSEndpoint, grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(pool, "127.0.0.1")))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return kmspb.NewKeyManagementServiceClient(conn)
}
