package keysource

import (
	"context"
	"encoding/base64"
	"net"
	"testing"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/getsops/sops/v3/keyservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

// loopbackKMS is a Cloud KMS server on loopback whose Decrypt returns the
// ciphertext reversed.
type loopbackKMS struct {
	kmspb.UnimplementedKeyManagementServiceServer
}

func (loopbackKMS) Decrypt(_ context.Context, r *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	out := make([]byte, len(r.Ciphertext))
	for i, b := range r.Ciphertext {
		out[len(out)-1-i] = b
	}
	return &kmspb.DecryptResponse{Plaintext: out}, nil
}

// TestGCPKMSClientLivesWithTheSource checks that the Cloud KMS client is
// made with the source's own context, which outlives the request that made
// it, and that Close closes the client and ends that context.
func TestGCPKMSClientLivesWithTheSource(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	kmspb.RegisterKeyManagementServiceServer(srv, loopbackKMS{})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	const id = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
	g, err := NewGCPKMS("gcp", GCPKMSConfig{ResourceID: id, Endpoint: ln.Addr().String()})
	require.NoError(t, err)
	var (
		made    int
		madeCtx context.Context
		client  *kms.KeyManagementClient
	)
	g.newClient = func(ctx context.Context, opts ...option.ClientOption) (*kms.KeyManagementClient, error) {
		made++
		madeCtx = ctx
		opts = append(opts, option.WithoutAuthentication(), option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
		c, err := kms.NewKeyManagementClient(ctx, opts...)
		client = c
		return c, err
	}
	key := &keyservice.Key{KeyType: &keyservice.Key_GcpKmsKey{GcpKmsKey: &keyservice.GcpKmsKey{ResourceId: id}}}
	wrapped := []byte(base64.StdEncoding.EncodeToString([]byte("abc")))

	for range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		plain, err := g.Unwrap(ctx, key, wrapped)
		cancel() // the request ends
		require.NoError(t, err)
		assert.Equal(t, "cba", string(plain))
		require.NotNil(t, madeCtx)
		assert.NoError(t, madeCtx.Err(), "the client's context ended with the request that made it")
	}
	assert.Equal(t, 1, made, "one client for the source's lifetime")

	require.NoError(t, g.Close())
	assert.Error(t, madeCtx.Err(), "Close ends the client's context")
	assert.Equal(t, connectivity.Shutdown, client.Connection().GetState(), "Close closes the client's connection")
	_, err = g.Unwrap(context.Background(), key, wrapped)
	assert.ErrorIs(t, err, errClosed)
	assert.NoError(t, g.Close(), "a second Close is harmless")

	// A Ring closes its sources.
	g2, err := NewGCPKMS("gcp2", GCPKMSConfig{ResourceID: id})
	require.NoError(t, err)
	r, err := NewRing(g2)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	_, err = g2.Unwrap(context.Background(), key, wrapped)
	assert.ErrorIs(t, err, errClosed)
}
