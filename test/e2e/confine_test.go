package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/test/testbed"
)

// confinedIdentity applies the self-managed overlay's RBAC and its
// ValidatingAdmissionPolicy, then acts as the webhook's service account
// (impersonated, as kubectl --as does): it may create and update its TLS
// Secret, and no other Secret of its namespace, which its RBAC alone
// would allow it to create.
func (s *deploySuite) confinedIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root, err := testbed.RepoRoot()
	require.NoError(t, err)
	for _, f := range []string{"manifests/base/serviceaccount.yaml", "manifests/overlays/self-managed/rbac.yaml", "manifests/overlays/self-managed/confine.yaml"} {
		s.kubectl(t, nil, "apply", "-f", filepath.Join(root, f))
	}
	defer s.kubectl(t, nil, "delete", "-f", filepath.Join(root, "manifests/overlays/self-managed/confine.yaml"))

	cfg := rest.CopyConfig(s.cp.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:sops-webhook:sops-webhook",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:sops-webhook", "system:authenticated"}}
	as, err := client.New(cfg, client.Options{})
	require.NoError(t, err)
	refusedByPolicy := func(err error) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "sops-webhook-confine-self-managed")
	}
	planted := func(ns string) error {
		return as.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "planted"}})
	}
	// The policy takes effect asynchronously: wait until it refuses.
	var last error
	require.Eventually(t, func() bool { last = planted("sops-webhook"); return refusedByPolicy(last) },
		time.Minute, 200*time.Millisecond, "another Secret of its namespace was not refused: %v", last)

	tls := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "sops-webhook", Name: "sops-webhook-tls"}}
	if err := s.c.Get(ctx, client.ObjectKeyFromObject(tls), tls); apierrors.IsNotFound(err) {
		require.NoError(t, as.Create(ctx, tls), "its own Secret may be created")
		require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(tls), tls))
	}
	tls.Annotations = map[string]string{"touched": "yes"}
	assert.NoError(t, as.Update(ctx, tls), "its own Secret may be updated")
	assert.True(t, apierrors.IsForbidden(as.Delete(ctx, tls)), "its own Secret may not be deleted")
	assert.True(t, apierrors.IsForbidden(planted("apps")), "a Secret of another namespace is beyond its RBAC")
}
