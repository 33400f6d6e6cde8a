package keysource

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/getsops/sops/v3/keyservice"
	"google.golang.org/api/option"
)

// GCPKMSConfig configures a Google Cloud KMS key source.
type GCPKMSConfig struct {
	// ResourceID is a glob (path.Match) of the crypto key resource IDs this
	// source may use, projects/P/locations/L/keyRings/R/cryptoKeys/*.
	ResourceID string
	// Endpoint, if set, replaces the KMS endpoint (host:port; Private
	// Service Connect).
	Endpoint string
}

// GCPKMS is a Source that unwraps data keys with Cloud KMS as the pod's own
// Google identity: application default credentials, which in a pod are
// GKE Workload Identity (the metadata server) or workload identity
// federation (a credential configuration file whose subject token is the
// pod's service-account token).
type GCPKMS struct {
	name string
	cfg  GCPKMSConfig
	ids  glob

	// ctx is the source's own: the client and its credential refreshes live
	// as long as the source, not as long as the request that first used it.
	ctx    context.Context
	cancel context.CancelFunc
	// newClient makes the client; tests replace it.
	newClient func(context.Context, ...option.ClientOption) (*kms.KeyManagementClient, error)

	mu     sync.Mutex
	client *kms.KeyManagementClient
	closed bool
}

// NewGCPKMS returns a Cloud KMS source. Credentials are found and the
// connection made on first use, so the webhook starts while Google is
// unreachable.
func NewGCPKMS(name string, cfg GCPKMSConfig) (*GCPKMS, error) {
	if !strings.HasPrefix(cfg.ResourceID, "projects/") {
		return nil, fmt.Errorf("gcpKms resourceID %q: must be projects/.../cryptoKeys/... or a glob of them", cfg.ResourceID)
	}
	ids, err := newGlob("gcpKms resourceID", cfg.ResourceID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &GCPKMS{name: name, cfg: cfg, ids: ids, ctx: ctx, cancel: cancel, newClient: kms.NewKeyManagementClient}, nil
}

// errClosed is returned by the Unwrap of a source that was closed.
var errClosed = &safeError{"the key source was replaced by a config reload"}

// Close closes the Cloud KMS client, if one was made, and ends the
// source's context. Unwraps after Close fail. It is safe to call twice.
func (g *GCPKMS) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	g.cancel()
	if g.client == nil {
		return nil
	}
	return g.client.Close()
}

// Name returns the key's configured name.
func (g *GCPKMS) Name() string { return g.name }

// Matches reports whether the metadata names a resource ID the config allows.
func (g *GCPKMS) Matches(key *keyservice.Key) bool {
	k := key.GetGcpKmsKey()
	return k != nil && g.ids.match(k.ResourceId)
}

// Unwrap decrypts the data key with the crypto key the metadata names, if
// the config allows it.
func (g *GCPKMS) Unwrap(ctx context.Context, key *keyservice.Key, ciphertext []byte) ([]byte, error) {
	if !g.Matches(key) {
		return nil, ErrNotHeld
	}
	// sops writes the Cloud KMS ciphertext base64-encoded.
	blob, err := base64.StdEncoding.DecodeString(string(ciphertext))
	if err != nil {
		return nil, errors.New("gcp kms: the wrapped data key is not base64")
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	c, err := g.kmsClient()
	if err != nil {
		return nil, err
	}
	resp, err := c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key.GetGcpKmsKey().ResourceId, Ciphertext: blob})
	if err != nil {
		return nil, grpcError("gcp kms decrypt", err)
	}
	return resp.Plaintext, nil
}

// kmsClient returns the source's client, making it on first use with the
// source's own context.
func (g *GCPKMS) kmsClient() (*kms.KeyManagementClient, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, errClosed
	}
	if g.client != nil {
		return g.client, nil
	}
	var opts []option.ClientOption
	if g.cfg.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(g.cfg.Endpoint))
	}
	c, err := g.newClient(g.ctx, opts...)
	if err != nil {
		return nil, &safeError{"gcp kms: no client (application default credentials not found)"}
	}
	g.client = c
	return c, nil
}
