package decrypt_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

const breakGlassARN = "arn:aws:kms:eu-west-1:111122223333:key/break-glass"

// awsBreakGlass starts the AWS KMS stand-in (AWS cannot run here) and
// returns the real AWS SDK's source for one key ARN, with the stand-in's
// credentials as the process's own, the stand-in, and the environment the
// sops CLI needs to use that key.
func awsBreakGlass(t *testing.T) (*keysource.AWSKMS, *standin.AWS) {
	t.Helper()
	a, err := standin.StartAWS(t.TempDir(), standin.AWSOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	a.UseAdminEnv(t)
	s, err := keysource.NewAWSKMS(context.Background(), "break-glass-kms", keysource.AWSKMSConfig{ARN: breakGlassARN})
	require.NoError(t, err)
	return s, a
}

// TestSeal: a sealed document opens with the sops CLI through the KMS key
// alone, and with the webhook's own path; a key that names a glob, or a
// KMS that fails, seals nothing.
func TestSeal(t *testing.T) {
	kms, a := awsBreakGlass(t)
	const identity = "AGE-SECRET-KEY-1PLAINTEXTSEALTEST"
	sealed, err := decrypt.Seal(context.Background(), "identity", identity, []keysource.Wrapper{kms})
	require.NoError(t, err)
	assert.NotContains(t, string(sealed), "PLAINTEXTSEALTEST")
	assert.Contains(t, string(sealed), breakGlassARN)

	got := sopskit.SopsDecrypt(t, sealed, "yaml", sopskit.Recipients{Env: a.AdminEnv()})
	assert.Equal(t, "identity: "+identity+"\n", string(got))
	ring, err := keysource.NewRing(kms)
	require.NoError(t, err)
	doc, err := decrypt.New(ring).Document(context.Background(), sealed, decrypt.FormatYAML, nil)
	require.NoError(t, err)
	assert.Equal(t, "identity: "+identity+"\n", string(doc.Plaintext))
	assert.Equal(t, []string{"break-glass-kms"}, doc.Keys)

	t.Run("a glob of keys", func(t *testing.T) {
		glob, err := keysource.NewAWSKMS(context.Background(), "all", keysource.AWSKMSConfig{ARN: "arn:aws:kms:eu-west-1:111122223333:key/*"})
		require.NoError(t, err)
		_, err = decrypt.Seal(context.Background(), "identity", identity, []keysource.Wrapper{glob})
		require.ErrorIs(t, err, keysource.ErrNotOneKey)
	})
	t.Run("an unreachable KMS", func(t *testing.T) {
		a.SetHanging(true)
		defer a.SetHanging(false)
		out, err := decrypt.Seal(context.Background(), "identity", identity, []keysource.Wrapper{kms})
		require.Error(t, err)
		assert.Contains(t, err.Error(), `key "break-glass-kms"`)
		assert.NotContains(t, err.Error(), "PLAINTEXTSEALTEST")
		assert.Nil(t, out)
	})
	t.Run("no keys", func(t *testing.T) {
		_, err := decrypt.Seal(context.Background(), "identity", identity, nil)
		require.Error(t, err)
	})
}

// TestRewrapWithBreakGlassKey: a rewrap also wraps the data key with a
// break-glass KMS key, which then opens the file alone (the sops CLI, which
// checks the MAC); a file that key already holds gains nothing; a KMS that
// fails refuses the rewrap, retryably, with no file.
func TestRewrapWithBreakGlassKey(t *testing.T) {
	kms, a := awsBreakGlass(t)
	g1, key1 := generation(t, 1, false)
	ring, err := keysource.NewRing(keysource.NewAgeGenerations("cluster", []keysource.AgeGeneration{g1}), kms)
	require.NoError(t, err)
	d := decrypt.New(ring)
	targets := func(string) (decrypt.RewrapPlan, error) {
		return decrypt.RewrapPlan{Add: []string{key1.Recipient}, Keys: []keysource.Wrapper{kms}}, nil
	}
	plain := "password: PLAINTEXT-kms-rewrap\n"
	enc := sopskit.SopsEncrypt(t, []byte(plain), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key1}})

	got, err := d.Rewrap(context.Background(), enc, decrypt.FormatYAML, nil, targets)
	require.NoError(t, err)
	assert.Equal(t, []string{"break-glass-kms"}, got.Added, "generation 1 holds it already")
	assert.Contains(t, string(got.File), breakGlassARN)
	assert.NotContains(t, string(got.File), "PLAINTEXT")
	assert.Equal(t, plain, string(sopskit.SopsDecrypt(t, got.File, "yaml", sopskit.Recipients{Env: a.AdminEnv()})))

	again, err := d.Rewrap(context.Background(), got.File, decrypt.FormatYAML, nil, targets)
	require.NoError(t, err)
	assert.Empty(t, again.Added)
	assert.Equal(t, 1, strings.Count(string(again.File), breakGlassARN))

	// The wrap draws on the request's budget, with the unwraps: with all
	// but one spent, the unwrap takes the last and the wrap is refused.
	ctx := keysource.WithRequestBudget(context.Background())
	for range keysource.MaxUnwrapsPerRequest - 1 {
		require.NoError(t, keysource.Spend(ctx))
	}
	spent, err := decrypt.New(ring).Rewrap(ctx, enc, decrypt.FormatYAML, nil, targets)
	require.Error(t, err)
	assert.True(t, decrypt.IsReason(err, decrypt.ReasonTooMuchWork), "%v", err)
	assert.Empty(t, spent.File)

	a.SetHanging(true)
	defer a.SetHanging(false)
	failed, err := d.Rewrap(context.Background(), enc, decrypt.FormatYAML, nil, targets)
	require.Error(t, err)
	assert.True(t, decrypt.IsReason(err, decrypt.ReasonUnavailable), "%v", err)
	assert.Empty(t, failed.File)
}
