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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

	mu     sync.Mutex
	client *kms.KeyManagementClient
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
	return &GCPKMS{name: name, cfg: cfg, ids: ids}, nil
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
	c, err := g.kmsClient(ctx)
	if err != nil {
		return nil, &safeError{"gcp kms: no client (application default credentials not found)"}
	}
	resp, err := c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key.GetGcpKmsKey().ResourceId, Ciphertext: blob})
	if err != nil {
		return nil, grpcError("gcp kms decrypt", err)
	}
	return resp.Plaintext, nil
}

func (g *GCPKMS) kmsClient(ctx context.Context) (*kms.KeyManagementClient, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.client != nil {
		return g.client, nil
	}
	var opts []option.ClientOption
	if g.cfg.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(g.cfg.Endpoint))
	}
	c, err := kms.NewKeyManagementClient(ctx, opts...)
	if err != nil {
		return nil, err
	}
	g.client = c
	return c, nil
}

// grpcError reduces a gRPC error to the operation and its status code.
func grpcError(op string, err error) error {
	st, ok := status.FromError(err)
	switch {
	case errors.Is(err, context.DeadlineExceeded), ok && st.Code() == codes.DeadlineExceeded:
		return &safeError{fmt.Sprintf("%s: no answer within %s", op, CallTimeout)}
	case ok:
		return &safeError{fmt.Sprintf("%s: %s", op, st.Code())}
	}
	return &safeError{fmt.Sprintf("%s failed", op)}
}
