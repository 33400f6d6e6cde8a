package keysource

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/getsops/sops/v3/keyservice"
	vault "github.com/hashicorp/vault/api"
)

// maxVaultTokenFileSize caps the service-account token file.
const maxVaultTokenFileSize = 64 << 10

// DefaultServiceAccountTokenFile is where Kubernetes mounts a pod's token.
const DefaultServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// VaultConfig configures a Vault (or OpenBao) transit key source.
type VaultConfig struct {
	// Address is the only Vault the source talks to, whatever a payload's
	// metadata names.
	Address string
	// EnginePath is the transit engine's mount, e.g. "transit".
	EnginePath string
	// KeyName is a glob (path.Match) of the transit key names allowed.
	KeyName string
	// CAFile, if set, is the PEM CA bundle Vault's certificate chains to;
	// otherwise the system roots.
	CAFile string
	// Role and MountPath of the Kubernetes auth method, and the file of the
	// service-account token to log in with.
	Role, MountPath, TokenFile string
}

// Vault is a Source that unwraps data keys with Vault's transit engine,
// logged in with the webhook's own service-account token through Vault's
// Kubernetes auth method. It never reads VAULT_TOKEN, VAULT_ADDR, other
// VAULT_* variables or ~/.vault-token, and never follows the address in a
// payload's metadata.
type Vault struct {
	name  string
	cfg   VaultConfig
	names glob
	// client carries the Vault token; loginClient never has one.
	client, loginClient *vault.Client
	now                 func() time.Time

	mu      sync.Mutex
	token   string
	renewAt time.Time
}

// NewVault returns a Vault source. It does not contact Vault: login happens
// on first use, so the webhook starts while Vault is down.
func NewVault(name string, cfg VaultConfig) (*Vault, error) {
	u, err := url.Parse(cfg.Address)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("vault address %q: must be an https:// URL", cfg.Address)
	}
	if cfg.EnginePath == "" || cfg.KeyName == "" || cfg.Role == "" {
		return nil, errors.New("vault: enginePath, keyName and kubernetesAuth.role are required")
	}
	names, err := newGlob("vault keyName", cfg.KeyName)
	if err != nil {
		return nil, err
	}
	if cfg.MountPath == "" {
		cfg.MountPath = "kubernetes"
	}
	if cfg.TokenFile == "" {
		cfg.TokenFile = DefaultServiceAccountTokenFile
	}
	cfg.EnginePath = strings.Trim(cfg.EnginePath, "/")
	cfg.MountPath = strings.Trim(cfg.MountPath, "/")

	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := readKeyFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("vault caFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("vault caFile %s: no PEM certificate", cfg.CAFile)
		}
		tlsConfig.RootCAs = pool
	}
	// No proxy from the environment, no redirects to other hosts.
	hc := &http.Client{
		Timeout:   CallTimeout,
		Transport: &http.Transport{TLSClientConfig: tlsConfig, Proxy: nil, ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("vault redirects are not followed")
		},
	}
	// A Config of our own, not vault.DefaultConfig, which reads VAULT_*.
	client, err := vault.NewClient(&vault.Config{Address: cfg.Address, HttpClient: hc, Timeout: CallTimeout, MaxRetries: 0})
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	// vault.NewClient takes VAULT_TOKEN and VAULT_NAMESPACE from the
	// environment; neither is ours.
	client.ClearToken()
	client.ClearNamespace()
	loginClient, err := client.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	loginClient.ClearToken()
	return &Vault{name: name, cfg: cfg, names: names, client: client, loginClient: loginClient, now: time.Now}, nil
}

// Name returns the key's configured name.
func (v *Vault) Name() string { return v.name }

// Matches reports whether the metadata names this source's engine and an
// allowed key (the address in the metadata is ignored).
func (v *Vault) Matches(key *keyservice.Key) bool {
	k := key.GetVaultKey()
	if k == nil || strings.Trim(k.EnginePath, "/") != v.cfg.EnginePath {
		return false
	}
	return v.names.match(k.KeyName)
}

// Unwrap decrypts the data key with the transit key the metadata names, at
// the configured address, if the configured engine and key pattern allow it.
func (v *Vault) Unwrap(ctx context.Context, key *keyservice.Key, ciphertext []byte) ([]byte, error) {
	if !v.Matches(key) {
		return nil, ErrNotHeld
	}
	name := key.GetVaultKey().KeyName
	body := map[string]any{"ciphertext": string(ciphertext)}
	secret, err := v.transit(ctx, "decrypt", name, body)
	var re *vault.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusForbidden {
		// The token was revoked or expired early: log in again, once.
		v.forget()
		secret, err = v.transit(ctx, "decrypt", name, body)
	}
	if err != nil {
		return nil, vaultError("transit decrypt", err)
	}
	if secret == nil || secret.Data == nil {
		return nil, errors.New("vault transit decrypt: empty response")
	}
	encoded, ok := secret.Data["plaintext"].(string)
	if !ok {
		return nil, errors.New("vault transit decrypt: no plaintext in the response")
	}
	dataKey, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, errors.New("vault transit decrypt: plaintext is not base64")
	}
	return dataKey, nil
}

// transit logs in if needed and calls the transit engine's op (encrypt or
// decrypt) for keyName.
func (v *Vault) transit(ctx context.Context, op, keyName string, body map[string]any) (*vault.Secret, error) {
	if err := v.login(ctx); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return v.client.Logical().WriteWithContext(ctx, v.cfg.EnginePath+"/"+op+"/"+keyName, body)
}

// login logs in with the service-account token unless the current Vault
// token has more than a third of its lease left.
func (v *Vault) login(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.token != "" && v.now().Before(v.renewAt) {
		return nil
	}
	jwt, err := readKeyFile(v.cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("vault login: service-account token: %w", err)
	}
	if len(jwt) > maxVaultTokenFileSize {
		return errors.New("vault login: service-account token file too large")
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	secret, err := v.loginClient.Logical().WriteWithContext(ctx, "auth/"+v.cfg.MountPath+"/login",
		map[string]any{"role": v.cfg.Role, "jwt": strings.TrimSpace(string(jwt))})
	if err != nil {
		return vaultError("kubernetes auth login", err)
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return errors.New("vault kubernetes auth login: no token in the response")
	}
	v.token = secret.Auth.ClientToken
	v.client.SetToken(v.token)
	lease := time.Duration(secret.Auth.LeaseDuration) * time.Second
	v.renewAt = v.now().Add(lease * 2 / 3)
	return nil
}

func (v *Vault) forget() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.token = ""
}

// vaultError reduces a Vault client error to what is safe to show: the
// operation and the HTTP status, never a response body.
func vaultError(op string, err error) error {
	var (
		re   *vault.ResponseError
		safe *safeError
	)
	switch {
	case errors.As(err, &safe):
		return safe
	case errors.As(err, &re):
		return &safeError{fmt.Sprintf("vault %s: HTTP %d", op, re.StatusCode)}
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return &safeError{fmt.Sprintf("vault %s: no answer within %s", op, CallTimeout)}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return &safeError{fmt.Sprintf("vault %s: cannot reach Vault", op)}
	}
	return &safeError{fmt.Sprintf("vault %s failed", op)}
}
