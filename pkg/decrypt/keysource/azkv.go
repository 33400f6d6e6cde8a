package keysource

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/getsops/sops/v3/keyservice"
)

// AzureKeyVaultConfig configures an Azure Key Vault key source.
type AzureKeyVaultConfig struct {
	// VaultURL is the only vault the source talks to, e.g.
	// https://myvault.vault.azure.net.
	VaultURL string
	// KeyName is a glob (path.Match) of the key names allowed.
	KeyName string
}

// azureName is what a key name or version may be: it becomes part of a URL
// path.
var azureName = regexp.MustCompile(`^[0-9A-Za-z-]{1,127}$`)

// AzureKeyVault is a Source that unwraps data keys with Azure Key Vault as
// the pod's Microsoft Entra Workload ID (AZURE_CLIENT_ID, AZURE_TENANT_ID,
// AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST, which the workload
// identity webhook injects). A payload is used only when its vault_url is
// the configured one; no other vault is ever contacted.
type AzureKeyVault struct {
	name  string
	cfg   AzureKeyVaultConfig
	names glob

	mu     sync.Mutex
	client *azkeys.Client
}

// NewAzureKeyVault returns an Azure Key Vault source. The credential is
// built on first use, so the webhook starts while Entra ID is unreachable.
func NewAzureKeyVault(name string, cfg AzureKeyVaultConfig) (*AzureKeyVault, error) {
	u, err := url.Parse(cfg.VaultURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("azureKeyVault vaultURL %q: must be an https:// URL", cfg.VaultURL)
	}
	if cfg.KeyName == "" {
		return nil, errors.New("azureKeyVault keyName: required")
	}
	names, err := newGlob("azureKeyVault keyName", cfg.KeyName)
	if err != nil {
		return nil, err
	}
	cfg.VaultURL = normalizeVaultURL(cfg.VaultURL)
	return &AzureKeyVault{name: name, cfg: cfg, names: names}, nil
}

func normalizeVaultURL(s string) string { return strings.TrimSuffix(strings.ToLower(s), "/") }

// Name returns the key's configured name.
func (a *AzureKeyVault) Name() string { return a.name }

// Matches reports whether the metadata names the configured vault and an
// allowed key.
func (a *AzureKeyVault) Matches(key *keyservice.Key) bool {
	k := key.GetAzureKeyvaultKey()
	if k == nil || normalizeVaultURL(k.VaultUrl) != a.cfg.VaultURL {
		return false
	}
	return a.names.match(k.Name)
}

// Unwrap decrypts the data key with the named key version, RSA-OAEP-256,
// as sops encrypts it.
func (a *AzureKeyVault) Unwrap(ctx context.Context, key *keyservice.Key, ciphertext []byte) ([]byte, error) {
	if !a.Matches(key) {
		return nil, ErrNotHeld
	}
	k := key.GetAzureKeyvaultKey()
	if !azureName.MatchString(k.Name) || (k.Version != "" && !azureName.MatchString(k.Version)) {
		return nil, errors.New("azure key vault: malformed key name or version")
	}
	blob, err := base64.RawURLEncoding.DecodeString(string(ciphertext))
	if err != nil {
		return nil, errors.New("azure key vault: the wrapped data key is not base64url")
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	c, err := a.keysClient()
	if err != nil {
		return nil, err
	}
	alg := azkeys.EncryptionAlgorithmRSAOAEP256
	resp, err := c.Decrypt(ctx, k.Name, k.Version, azkeys.KeyOperationParameters{Algorithm: &alg, Value: blob}, nil)
	if err != nil {
		return nil, azureError("azure key vault decrypt", err)
	}
	return resp.Result, nil
}

// keysClient returns the source's client, made on first use with the
// pod's workload identity. Its errors name the missing setting, never a
// value.
func (a *AzureKeyVault) keysClient() (*azkeys.Client, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client != nil {
		return a.client, nil
	}
	opts := azcore.ClientOptions{
		Retry:     policy.RetryOptions{MaxRetries: 1, TryTimeout: CallTimeout},
		Transport: &http.Client{Timeout: CallTimeout},
	}
	cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
		ClientOptions: opts,
		// The authority is AZURE_AUTHORITY_HOST, set with the rest of the
		// workload identity; no discovery request to a third host.
		DisableInstanceDiscovery: true,
	})
	if err != nil {
		return nil, &safeError{"azure key vault: no workload identity credential (" + credentialProblem(err) + ")"}
	}
	c, err := azkeys.NewClient(a.cfg.VaultURL, cred, &azkeys.ClientOptions{ClientOptions: opts})
	if err != nil {
		return nil, fmt.Errorf("azure key vault: client: %w", err)
	}
	a.client = c
	return c, nil
}

// credentialProblem names which workload identity setting is missing,
// without echoing any value.
func credentialProblem(err error) string {
	msg := err.Error()
	for _, v := range []string{"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"} {
		if strings.Contains(msg, v) {
			return v + " is not set"
		}
	}
	return "invalid configuration"
}

// azureError reduces an Azure SDK error to the operation and its HTTP status
// or error code.
func azureError(op string, err error) error {
	var re *azcore.ResponseError
	var auth *azidentity.AuthenticationFailedError
	switch {
	case errors.As(err, &auth):
		if auth.RawResponse != nil {
			return &safeError{fmt.Sprintf("%s: workload identity token request failed: HTTP %d", op, auth.RawResponse.StatusCode)}
		}
		return &safeError{fmt.Sprintf("%s: workload identity token request failed", op)}
	case errors.As(err, &re):
		return &safeError{fmt.Sprintf("%s: HTTP %d %s", op, re.StatusCode, re.ErrorCode)}
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return &safeError{fmt.Sprintf("%s: no answer within %s", op, CallTimeout)}
	}
	return &safeError{fmt.Sprintf("%s failed", op)}
}
