package e2e

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

const (
	webhookRole     = "arn:aws:iam::111122223333:role/sops-webhook"
	podIdentityRole = "arn:aws:iam::111122223333:role/sops-webhook-pod-identity"
	kmsKeyARN       = "arn:aws:kms:eu-west-1:111122223333:key/app-1"
)

// TestAWSKMS decrypts with AWS KMS as the webhook's IRSA identity: the real
// AWS SDK's default chain exchanges a service-account token issued by the
// test API server (TokenRequest, audience sts.amazonaws.com) at the STS
// stand-in, which verifies it against the API server's own OIDC keys, and
// calls the KMS stand-in with the credentials it got.
func TestAWSKMS(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b := newIdentityBed(ctx, t)
	tokenFile, jwt := b.tokenFile(ctx, t, "sops-webhook", "sts.amazonaws.com")
	standIn, err := standin.StartAWS(b.work, standin.AWSOptions{
		JWKS: b.jwks, Issuer: b.issuer,
		Trusts:      map[string]string{webhookRole: webhookSubject},
		PodIdentity: map[string]string{webhookSubject: podIdentityRole},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = standIn.Close() })

	t.Run("the STS stand-in verifies tokens for real", func(t *testing.T) {
		_, other := b.tokenFile(ctx, t, "intruder", "sts.amazonaws.com")
		cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion("eu-west-1"), awsconfig.WithCredentialsProvider(aws.AnonymousCredentials{}),
			awsconfig.WithSharedConfigFiles([]string{}), awsconfig.WithSharedCredentialsFiles([]string{}))
		require.NoError(t, err)
		caPEM, err := os.ReadFile(standIn.CAFile)
		require.NoError(t, err)
		client := sts.NewFromConfig(cfg, func(o *sts.Options) {
			o.BaseEndpoint = aws.String(standIn.URL)
			o.HTTPClient = caClient(t, caPEM)
		})
		for name, tok := range map[string]string{"another service account": other, "a forged token": jwt[:len(jwt)-4] + "AAAA"} {
			_, err := client.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
				RoleArn: aws.String(webhookRole), RoleSessionName: aws.String("t"), WebIdentityToken: aws.String(tok),
			})
			assert.ErrorContains(t, err, "AccessDenied", name)
		}
		assert.Zero(t, standIn.AssumeCalls.Load())
	})

	config := "apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: prod-kms\n    awsKms: {arn: \"arn:aws:kms:eu-west-1:111122223333:key/*\"}\n"
	// What EKS puts in a pod with IRSA, plus the stand-in's endpoints.
	irsaEnv := []string{"AWS_ROLE_ARN=" + webhookRole, "AWS_WEB_IDENTITY_TOKEN_FILE=" + tokenFile, "AWS_REGION=eu-west-1",
		"AWS_ENDPOINT_URL_STS=" + standIn.URL, "AWS_ENDPOINT_URL_KMS=" + standIn.URL, "AWS_CA_BUNDLE=" + standIn.CAFile,
		"AWS_EC2_METADATA_DISABLED=true"}
	wh := b.startWebhook(ctx, t, "irsa", config, irsaEnv...)

	recipients := sopskit.Recipients{KMS: []string{kmsKeyARN}, Env: standIn.AdminEnv()}
	encrypt := func(t *testing.T, plain string) []byte {
		return sopskit.SopsEncrypt(t, []byte(plain), "yaml", recipients, "--encryption-context", "app:payments")
	}
	create := func(name string, value []byte) error { return b.create(ctx, name, value) }
	stored := func(t *testing.T, name string) string { return b.stored(ctx, t, name) }

	t.Run("decrypts as the pod's IRSA role, encryption context passed through", func(t *testing.T) {
		doc := encrypt(t, "password: aws-PLAINTEXT-1\n")
		require.Contains(t, string(doc), "app: payments", "the document carries an encryption context")
		require.NoError(t, create("kms-doc", doc))
		assert.Equal(t, "password: aws-PLAINTEXT-1\n", stored(t, "kms-doc"))
		assert.EqualValues(t, 1, standIn.AssumeCalls.Load())
		assert.Equal(t, []string{webhookRole}, standIn.Callers())
	})

	t.Run("a role and profile named in the metadata are not used", func(t *testing.T) {
		doc := encrypt(t, "password: aws-PLAINTEXT-2\n")
		hostile := strings.Replace(string(doc), `aws_profile: ""`, "aws_profile: evil\n          role: arn:aws:iam::999999999999:role/evil", 1)
		require.NotEqual(t, string(doc), hostile)
		require.NoError(t, create("kms-role", []byte(hostile)))
		assert.Equal(t, "password: aws-PLAINTEXT-2\n", stored(t, "kms-role"))
		callers := standIn.Callers()
		assert.Equal(t, webhookRole, callers[len(callers)-1], "KMS was called as the webhook's own role")
	})

	t.Run("a key ARN outside the allow-list is not contacted", func(t *testing.T) {
		before := standIn.Decrypts.Load()
		doc := sopskit.SopsEncrypt(t, []byte("password: aws-PLAINTEXT-3\n"), "yaml",
			sopskit.Recipients{KMS: []string{"arn:aws:kms:eu-west-1:999999999999:key/other"}, Env: standIn.AdminEnv()})
		err := create("kms-other-account", doc)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no configured key can open it")
		assert.Equal(t, before, standIn.Decrypts.Load())
	})

	t.Run("KMS down: a retryable 503 within the deadline; back up: decrypts without a restart", func(t *testing.T) {
		doc := encrypt(t, "password: aws-PLAINTEXT-4\n")
		standIn.SetHanging(true)
		start := time.Now()
		err := create("kms-down", doc)
		elapsed := time.Since(start)
		standIn.SetHanging(false)
		require.Error(t, err)
		assert.True(t, apierrors.IsServiceUnavailable(err), "a retryable 503, not a denial: %v", err)
		assert.Contains(t, err.Error(), `key "prod-kms": aws kms decrypt: no answer within`)
		assert.Less(t, elapsed, 8*time.Second, "inside the API server's 10 s webhook timeout")
		require.NoError(t, create("kms-back", doc))
		assert.Equal(t, "password: aws-PLAINTEXT-4\n", stored(t, "kms-back"))
	})

	t.Run("cache: 100 Secrets from one values file cost one KMS call", func(t *testing.T) {
		enc := sopskit.SopsEncrypt(t, []byte("db:\n  password: aws-PLAINTEXT-values\n"), "yaml", recipients)
		tok, index := sopskit.ValuesLeaves(t, enc)[0].Value.(string), sopskit.ValuesIndex(t, enc)
		before := standIn.Decrypts.Load()
		for i := range 100 {
			require.NoError(t, b.cp.Client.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: "values-" + strconv.Itoa(i), Namespace: "apps", Annotations: map[string]string{mutate.AnnotationValues: index}},
				Data:       map[string][]byte{"password": []byte(tok)},
			}))
		}
		assert.EqualValues(t, 1, standIn.Decrypts.Load()-before)
	})

	t.Run("EKS Pod Identity: the same source, the agent's credentials", func(t *testing.T) {
		podToken, _ := b.tokenFile(ctx, t, "sops-webhook", "pods.eks.amazonaws.com")
		pod := b.startWebhook(ctx, t, "pod-identity", config,
			// What EKS puts in a pod with a Pod Identity association. The
			// credentials client does not use AWS_CA_BUNDLE (the real agent
			// is plain HTTP on a link-local address), hence SSL_CERT_FILE.
			"AWS_CONTAINER_CREDENTIALS_FULL_URI="+standIn.PodIdentityURL(), "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="+podToken,
			"AWS_REGION=eu-west-1", "AWS_ENDPOINT_URL_KMS="+standIn.URL, "AWS_CA_BUNDLE="+standIn.CAFile,
			"AWS_EC2_METADATA_DISABLED=true", "SSL_CERT_FILE="+standIn.CAFile)
		require.NoError(t, create("kms-pod-identity", encrypt(t, "password: aws-PLAINTEXT-5\n")))
		assert.Equal(t, "password: aws-PLAINTEXT-5\n", stored(t, "kms-pod-identity"))
		callers := standIn.Callers()
		assert.Equal(t, podIdentityRole, callers[len(callers)-1])
		require.NoError(t, pod.Stop())
		b.point(ctx, t, wh)
	})

	t.Run("a break-glass KMS key seals each generation and joins rewraps", func(t *testing.T) {
		breakGlassWebhook(ctx, t, b, wh, standIn, irsaEnv)
	})

	t.Run("logs hold no plaintext or credentials", func(t *testing.T) {
		logs := wh.Logs()
		assert.NotContains(t, logs, "PLAINTEXT")
		assert.NotContains(t, logs, jwt)
		assert.NotContains(t, logs, "ASIA")
	})
}

// caClient is an AWS SDK HTTP client trusting only caPEM.
func caClient(t *testing.T, caPEM []byte) *http.Client {
	t.Helper()
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: apiServerTLS(t, caPEM)}}
}

// apiServerTLS trusts caPEM and presents the test bed's API-server client
// certificate, which every webhook of the test bed requires.
func apiServerTLS(t *testing.T, caPEM []byte) *tls.Config {
	t.Helper()
	id, err := testbed.LoadAPIServerClient()
	require.NoError(t, err)
	c := id.TLSConfig(caPEM)
	require.NotNil(t, c.RootCAs)
	return c
}

// breakGlassARN is the AWS KMS key the generated key's backups are sealed
// for.
const breakGlassARN = "arn:aws:kms:eu-west-1:111122223333:key/break-glass"

// breakGlassWebhook runs a webhook that generates its key and seals each
// generation for a break-glass AWS KMS key, as its IRSA role, then points
// the API server back at wh. The sealed backup is published and opens with
// the documented restore command (the sops CLI, the KMS key alone) to the
// generation's identity; a rewrap adds the KMS key, which then opens the
// file alone; the logs hold neither the identity nor the plaintext.
func breakGlassWebhook(ctx context.Context, t *testing.T, b *identityBed, wh *testbed.Webhook, standIn *standin.AWS, env []string) {
	admin := filepath.Join(b.work, "admin.kubeconfig")
	require.NoError(t, b.cp.WriteKubeconfig(admin))
	config := "apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: cluster\n    generate: {breakGlassKeys: [backup-kms]}\n" +
		"  - name: backup-kms\n    awsKms: {arn: \"" + breakGlassARN + "\"}\n"
	sealing := b.startWebhookWith(ctx, t, "break-glass-kms", config,
		[]string{"--kubeconfig", admin, "--namespace", "sops-webhook", "--config-check-interval", "200ms"}, env)
	defer func() {
		require.NoError(t, sealing.Stop())
		b.point(ctx, t, wh)
	}()

	keys, err := (&clusterkeys.Store{Secrets: b.kube.CoreV1().Secrets("sops-webhook"), Name: clusterkeys.DefaultSecretName}).Read(ctx)
	require.NoError(t, err)
	gen := keys.Key("cluster").Generations[0]
	backups := &corev1.ConfigMap{}
	require.Eventually(t, func() bool {
		err := b.cp.Client.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: clusterkeys.DefaultBackupsConfigMapName}, backups)
		return err == nil && backups.Data[clusterkeys.SealedBackupName("cluster", gen.Number)] != ""
	}, 30*time.Second, 100*time.Millisecond, "the sealed backup is published")
	sealed := backups.Data[clusterkeys.SealedBackupName("cluster", gen.Number)]
	assert.NotContains(t, sealed, "AGE-SECRET-KEY")
	assert.Contains(t, sealed, breakGlassARN)

	// The restore in docs/operations.md: the operator's KMS access alone.
	tools := sopskit.Need(t, "the sops CLI", func(t sopskit.Tools) string { return t.Sops })
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.agekey.sops.yaml")
	require.NoError(t, os.WriteFile(file, []byte(sealed), 0o600))
	cmd := exec.CommandContext(ctx, tools.Sops, "decrypt", "--extract", `["identity"]`, file)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, standIn.AdminEnv()...)
	out, err := cmd.Output()
	require.NoError(t, err)
	id, err := age.ParseX25519Identity(strings.TrimSpace(string(out)))
	require.NoError(t, err)
	assert.Equal(t, gen.Recipient, id.Recipient().String(), "the sealed backup holds the generation's identity")

	plain := "password: PLAINTEXT-kms-break-glass\n"
	enc := sopskit.SopsEncrypt(t, []byte(plain), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: gen.Recipient}}})
	answer := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "rewrap-kms", Annotations: map[string]string{mutate.AnnotationRewrap: "true"}},
		Data:       map[string][]byte{"values.enc.yaml": enc},
	}
	require.NoError(t, b.cp.Client.Create(ctx, answer, client.DryRunAll))
	rewrapped := answer.Data["values.enc.yaml"]
	assert.Contains(t, string(rewrapped), breakGlassARN)
	assert.NotContains(t, string(rewrapped), "PLAINTEXT")
	assert.Equal(t, plain, string(sopskit.SopsDecrypt(t, rewrapped, "yaml", sopskit.Recipients{Env: standIn.AdminEnv()})), "the KMS key alone opens it")
	logs := sealing.Logs()
	assert.NotContains(t, logs, "PLAINTEXT")
	assert.NotContains(t, logs, "AGE-SECRET-KEY")
}
