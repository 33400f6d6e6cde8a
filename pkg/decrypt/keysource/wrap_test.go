package keysource

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/getsops/sops/v3/keys"
	"github.com/getsops/sops/v3/keyservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

// caPool reads a stand-in's CA.
func caPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(file)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	return pool
}

// staticToken is an Azure credential holding one access token.
type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// wrapCase builds a source for one key, or for a glob of keys, against a
// stand-in (the clouds cannot run here) through the real SDK.
type wrapCase struct {
	name   string
	source func(t *testing.T, locator string) Wrapper
	one    string
	glob   string
	// field is where the master key records the key it names.
	field func(keys.MasterKey) string
}

func wrapCases() []wrapCase {
	return []wrapCase{
		{
			name: "aws kms", one: "arn:aws:kms:eu-west-1:111122223333:key/backup", glob: "arn:aws:kms:eu-west-1:111122223333:key/*",
			source: func(t *testing.T, arn string) Wrapper {
				a, err := standin.StartAWS(t.TempDir(), standin.AWSOptions{})
				require.NoError(t, err)
				t.Cleanup(func() { _ = a.Close() })
				a.UseAdminEnv(t)
				s, err := NewAWSKMS(context.Background(), "backup", AWSKMSConfig{ARN: arn, Endpoint: a.URL})
				require.NoError(t, err)
				return s
			},
			field: func(k keys.MasterKey) string { return k.ToMap()["arn"].(string) },
		},
		{
			name: "gcp kms", one: "projects/p/locations/global/keyRings/r/cryptoKeys/backup", glob: "projects/p/locations/global/keyRings/r/cryptoKeys/*",
			source: func(t *testing.T, id string) Wrapper {
				g, err := standin.StartGCP(t.TempDir(), standin.GCPOptions{})
				require.NoError(t, err)
				t.Cleanup(func() { _ = g.Close() })
				s, err := NewGCPKMS("backup", GCPKMSConfig{ResourceID: id, Endpoint: g.KMSEndpoint})
				require.NoError(t, err)
				t.Cleanup(func() { _ = s.Close() })
				pool := caPool(t, g.CAFile)
				// The stand-in's token instead of application default
				// credentials; the real client library otherwise.
				s.newClient = func(ctx context.Context, opts ...option.ClientOption) (*kms.KeyManagementClient, error) {
					opts = append(opts, option.WithTokenSource(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: g.AdminToken()})),
						option.WithGRPCDialOption(grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(pool, "127.0.0.1"))))
					return kms.NewKeyManagementClient(ctx, opts...)
				}
				return s
			},
			field: func(k keys.MasterKey) string { return k.ToMap()["resource_id"].(string) },
		},
		{
			name: "azure key vault", one: "backup", glob: "back*",
			source: func(t *testing.T, name string) Wrapper {
				az, err := standin.StartAzure(t.TempDir(), standin.AzureOptions{})
				require.NoError(t, err)
				t.Cleanup(func() { _ = az.Close() })
				s, err := NewAzureKeyVault("backup", AzureKeyVaultConfig{VaultURL: az.URL, KeyName: name})
				require.NoError(t, err)
				// The stand-in's token instead of the workload identity
				// credential; the real client library otherwise.
				transport := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool(t, az.CAFile)}}}
				s.client, err = azkeys.NewClient(az.URL, staticToken(az.AdminToken()), &azkeys.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: transport}})
				require.NoError(t, err)
				return s
			},
			field: func(k keys.MasterKey) string {
				m := k.ToMap()
				return m["key"].(string) + "/" + m["version"].(string)
			},
		},
		{
			name: "vault transit", one: "backup", glob: "back*",
			source: func(t *testing.T, name string) Wrapper {
				dir := t.TempDir()
				v, err := standin.StartVault(dir, standin.VaultOptions{
					Review: func(_ context.Context, jwt string) (string, bool, error) {
						return "system:serviceaccount:sops-webhook:sops-webhook", jwt == "the-webhook", nil
					},
					Roles: map[string]string{"sops-webhook": "system:serviceaccount:sops-webhook:sops-webhook"},
				})
				require.NoError(t, err)
				t.Cleanup(func() { _ = v.Close() })
				token := filepath.Join(dir, "token")
				require.NoError(t, os.WriteFile(token, []byte("the-webhook"), 0o600))
				s, err := NewVault("backup", VaultConfig{Address: v.URL, EnginePath: "transit", KeyName: name, CAFile: v.CAFile, Role: "sops-webhook", TokenFile: token})
				require.NoError(t, err)
				return s
			},
			field: func(k keys.MasterKey) string { return k.ToMap()["key_name"].(string) },
		},
	}
}

// TestWrap: each KMS and Vault source wraps a data key through its real
// SDK for the one key its config names, as a sops master key that the same
// source unwraps; a source whose config names a glob wraps nothing.
func TestWrap(t *testing.T) {
	dataKey := bytes.Repeat([]byte{0x5a}, 32)
	for _, tt := range wrapCases() {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.source(t, tt.one)
			require.NoError(t, OneKey(s))
			mk, err := s.Wrap(context.Background(), dataKey)
			require.NoError(t, err)
			assert.Contains(t, tt.field(mk), strings.TrimSuffix(tt.one, "/"))
			assert.NotContains(t, string(mk.EncryptedDataKey()), string(dataKey))
			key := keyservice.KeyFromMasterKey(mk)
			require.True(t, s.Matches(&key), "the master key names the configured key")
			got, err := s.Unwrap(context.Background(), &key, mk.EncryptedDataKey())
			require.NoError(t, err)
			assert.Equal(t, dataKey, got)

			glob := tt.source(t, tt.glob)
			require.ErrorIs(t, OneKey(glob), ErrNotOneKey)
			_, err = glob.Wrap(context.Background(), dataKey)
			require.ErrorIs(t, err, ErrNotOneKey)
		})
	}
	require.Error(t, OneKey(NewAgeGenerations("cluster", nil)), "an age key has recipients, not a KMS to wrap with")
}
