package keysource_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/getsops/sops/v3/keyservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

const webhookSA = "system:serviceaccount:sops-webhook:sops-webhook"

// vaultFixture is the Vault stand-in with a reviewer that accepts one JWT
// as the webhook's service account.
type vaultFixture struct {
	v         *standin.Vault
	tokenFile string
}

func newVaultFixture(t *testing.T, ttl time.Duration) *vaultFixture {
	t.Helper()
	dir := t.TempDir()
	jwt := "jwt-of-the-webhook"
	v, err := standin.StartVault(dir, standin.VaultOptions{
		Review: func(_ context.Context, got string) (string, bool, error) {
			if got == jwt {
				return webhookSA, true, nil
			}
			return "", false, nil
		},
		Roles:    map[string]string{"sops-webhook": webhookSA},
		TokenTTL: ttl,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = v.Close() })
	f := &vaultFixture{v: v, tokenFile: filepath.Join(dir, "token")}
	require.NoError(t, os.WriteFile(f.tokenFile, []byte(jwt+"\n"), 0o600))
	return f
}

func (f *vaultFixture) source(t *testing.T, mod func(*keysource.VaultConfig)) *keysource.Vault {
	t.Helper()
	cfg := keysource.VaultConfig{Address: f.v.URL, EnginePath: "transit", KeyName: "app-*", CAFile: f.v.CAFile, Role: "sops-webhook", TokenFile: f.tokenFile}
	if mod != nil {
		mod(&cfg)
	}
	s, err := keysource.NewVault("vault", cfg)
	require.NoError(t, err)
	return s
}

// wrap encrypts dataKey with transit key name, as sops does.
func (f *vaultFixture) wrap(t *testing.T, name string) []byte {
	t.Helper()
	pem, err := os.ReadFile(f.v.CAFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body, _ := json.Marshal(map[string]string{"plaintext": base64.StdEncoding.EncodeToString(dataKey)})
	req, _ := http.NewRequest(http.MethodPost, f.v.URL+"/v1/transit/encrypt/"+name, bytes.NewReader(body))
	req.Header.Set("X-Vault-Token", f.v.RootToken)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out struct {
		Data struct{ Ciphertext string } `json:"data"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return []byte(out.Data.Ciphertext)
}

func vaultKey(address, engine, name string) *keyservice.Key {
	return &keyservice.Key{KeyType: &keyservice.Key_VaultKey{VaultKey: &keyservice.VaultKey{VaultAddress: address, EnginePath: engine, KeyName: name}}}
}

func TestVaultUnwrapsWithItsOwnIdentityOnly(t *testing.T) {
	f := newVaultFixture(t, time.Hour)
	elsewhere, err := standin.StartConnectionCounter()
	require.NoError(t, err)
	t.Cleanup(func() { _ = elsewhere.Close() })
	// The environment a hostile or careless pod spec could set.
	t.Setenv("VAULT_ADDR", "http://"+elsewhere.Addr)
	t.Setenv("VAULT_TOKEN", "stolen-token")
	t.Setenv("VAULT_NAMESPACE", "evil")

	s := f.source(t, nil)
	ct := f.wrap(t, "app-1")
	for range 3 {
		// The metadata names another Vault: it is ignored.
		got, err := s.Unwrap(context.Background(), vaultKey("http://"+elsewhere.Addr, "transit", "app-1"), ct)
		require.NoError(t, err)
		assert.Equal(t, dataKey, got)
	}
	assert.EqualValues(t, 1, f.v.Logins.Load(), "one login for three unwraps")
	assert.EqualValues(t, 3, f.v.Decrypts.Load())
	assert.Zero(t, elsewhere.Count.Load(), "the address in the metadata and VAULT_ADDR were never contacted")
}

func TestVaultRefusesKeysOutsideItsConfig(t *testing.T) {
	f := newVaultFixture(t, time.Hour)
	s := f.source(t, nil)
	ct := f.wrap(t, "app-1")
	for _, k := range []*keyservice.Key{
		vaultKey(f.v.URL, "transit", "other"),
		vaultKey(f.v.URL, "secret-engine", "app-1"),
		{KeyType: &keyservice.Key_AgeKey{AgeKey: &keyservice.AgeKey{}}},
	} {
		_, err := s.Unwrap(context.Background(), k, ct)
		assert.ErrorIs(t, err, keysource.ErrNotHeld)
	}
	assert.Zero(t, f.v.Logins.Load(), "Vault was not contacted")
}

func TestVaultLogsInAgainBeforeExpiryAndAfterRevocation(t *testing.T) {
	f := newVaultFixture(t, 3*time.Second)
	s := f.source(t, nil)
	ct := f.wrap(t, "app-1")
	_, err := s.Unwrap(context.Background(), vaultKey("", "transit", "app-1"), ct)
	require.NoError(t, err)
	time.Sleep(2100 * time.Millisecond) // past two thirds of the lease
	_, err = s.Unwrap(context.Background(), vaultKey("", "transit", "app-1"), ct)
	require.NoError(t, err)
	assert.EqualValues(t, 2, f.v.Logins.Load(), "logged in again before the token expired")

	f.v.RevokeAll()
	_, err = s.Unwrap(context.Background(), vaultKey("", "transit", "app-1"), ct)
	require.NoError(t, err, "a revoked token is replaced by a new login")
	assert.EqualValues(t, 3, f.v.Logins.Load())

	one := f.source(t, func(c *keysource.VaultConfig) { c.KeyName = "app-1" })
	_, err = one.Wrap(context.Background(), dataKey)
	require.NoError(t, err)
	logins := f.v.Logins.Load()
	f.v.RevokeAll()
	_, err = one.Wrap(context.Background(), dataKey)
	require.NoError(t, err, "a wrap, too, replaces a revoked token by a new login")
	assert.Equal(t, logins+1, f.v.Logins.Load())
}

func TestVaultFailures(t *testing.T) {
	f := newVaultFixture(t, time.Hour)
	ct := f.wrap(t, "app-1")

	t.Run("a token Vault does not accept", func(t *testing.T) {
		s := f.source(t, func(c *keysource.VaultConfig) {
			c.TokenFile = filepath.Join(t.TempDir(), "other")
			require.NoError(t, os.WriteFile(c.TokenFile, []byte("someone-else"), 0o600))
		})
		_, err := s.Unwrap(context.Background(), vaultKey("", "transit", "app-1"), ct)
		require.Error(t, err)
		assert.Equal(t, "vault kubernetes auth login: HTTP 403", err.Error())
	})
	t.Run("Vault hangs: the call gives up at its deadline", func(t *testing.T) {
		s := f.source(t, nil)
		f.v.SetHanging(true)
		defer f.v.SetHanging(false)
		start := time.Now()
		_, err := s.Unwrap(context.Background(), vaultKey("", "transit", "app-1"), ct)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no answer within")
		assert.Less(t, time.Since(start), 2*keysource.CallTimeout+time.Second)
	})
	t.Run("plain http is refused", func(t *testing.T) {
		_, err := keysource.NewVault("v", keysource.VaultConfig{Address: "http://vault", EnginePath: "t", KeyName: "k", Role: "r"})
		require.ErrorContains(t, err, "https://")
	})
}
