package policy

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

type staticLabels map[string]map[string]string

func (s staticLabels) Labels(_ context.Context, ns string) (map[string]string, error) {
	l, ok := s[ns]
	if !ok {
		return nil, errors.New("not found")
	}
	return l, nil
}

// users lists who may use which key where: "user/ns/key".
type users map[string]bool

func (u users) Allowed(_ context.Context, user authenticationv1.UserInfo, ns, key string) (bool, error) {
	return u[user.Username+"/"+ns+"/"+key], nil
}

func TestAccess(t *testing.T) {
	sel, err := labels.Parse("tier=prod")
	require.NoError(t, err)
	rules := []Rule{
		{Keys: []string{"team-a"}, Namespaces: []string{"team-a", "team-a-*"}},
		{Keys: []string{"shared"}, Namespaces: []string{"*"}, Kinds: []string{KindSecret, KindConfigMap}},
		{Keys: []string{"prod"}, NamespaceSelector: sel},
		{Keys: []string{"vault"}, Namespaces: []string{"*"}, RequireRBAC: true},
	}
	ns := staticLabels{"team-a": {}, "team-b": {}, "payments": {"tier": "prod"}, "team-a-dev": {}}
	p, err := New(rules, []string{"team-a", "shared", "prod", "vault", "unused"}, ns, users{"alice/team-b/vault": true})
	require.NoError(t, err)

	tests := []struct {
		ns, kind, user, key string
		want                string // "" allowed, else in the error
		// unknown is set where the policy could not decide (ErrCheckFailed)
		// rather than refuse (ErrNotGranted).
		unknown bool
	}{
		{"team-a", KindSecret, "bob", "team-a", "", false},
		{"team-a-dev", KindSecret, "bob", "team-a", "", false},
		{"team-b", KindSecret, "bob", "team-a", `key "team-a" is not granted to Secrets in namespace "team-b"`, false},
		{"team-a", KindConfigMap, "bob", "team-a", `key "team-a" is not granted to ConfigMaps in namespace "team-a"`, false},
		{"team-b", KindConfigMap, "bob", "shared", "", false},
		{"payments", KindSecret, "bob", "prod", "", false},
		{"team-b", KindSecret, "bob", "prod", `key "prod" is not granted`, false},
		{"ghost", KindSecret, "bob", "prod", `cannot read the labels of namespace "ghost"`, true},
		{"team-b", KindSecret, "alice", "vault", "", false},
		{"team-b", KindSecret, "bob", "vault", `user "bob" may not use key "vault" in namespace "team-b": grant verb "use" on keys.sops-webhook.io named "vault"`, false},
		{"team-a", KindSecret, "bob", "unused", `key "unused" is not granted`, false},
	}
	for _, tt := range tests {
		t.Run(tt.user+"/"+tt.ns+"/"+tt.kind+"/"+tt.key, func(t *testing.T) {
			err := p.Access(tt.ns, tt.kind, authenticationv1.UserInfo{Username: tt.user}).Allowed(context.Background(), tt.key)
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			if tt.unknown {
				require.ErrorIs(t, err, keysource.ErrCheckFailed)
				require.NotErrorIs(t, err, keysource.ErrNotGranted, "a failed lookup is not a refusal")
			} else {
				require.ErrorIs(t, err, keysource.ErrNotGranted)
			}
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestNewValidates(t *testing.T) {
	_, err := New([]Rule{
		{Keys: nil, Namespaces: []string{"x"}},
		{Keys: []string{"nope"}, Namespaces: []string{"["}},
		{Keys: []string{"a"}},
		{Keys: []string{"a"}, Namespaces: []string{"x"}, Kinds: []string{"Pod"}},
		{Keys: []string{"a"}, Namespaces: []string{"x"}, RequireRBAC: true},
		{Keys: []string{"a"}, NamespaceSelector: labels.Everything()},
	}, []string{"a"}, nil, nil)
	require.Error(t, err)
	for _, want := range []string{
		"policy rule 1: keys: at least one key",
		`policy rule 2: keys: "nope" is not a configured key`,
		`policy rule 2: namespaces: "[" is not a valid glob`,
		"policy rule 3: namespaces or namespaceSelector is required",
		`policy rule 4: kinds: "Pod" is not Secret or ConfigMap`,
		"policy rule 5: requireRBAC needs an authorizer",
		"policy rule 6: namespaceSelector needs namespace access",
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestSubjectAccessReviewsAsksOnceAndCaches(t *testing.T) {
	client := fake.NewClientset()
	var calls atomic.Int64
	var got *authorizationv1.SubjectAccessReview
	client.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		calls.Add(1)
		got = a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		got.Status.Allowed = got.Spec.User == "alice"
		return true, got, nil
	})
	now := time.Now()
	s := NewSubjectAccessReviews(client, time.Minute, func() time.Time { return now })
	alice := authenticationv1.UserInfo{Username: "alice", Groups: []string{"devs"}, Extra: map[string]authenticationv1.ExtraValue{"scopes": {"x"}}}

	for range 5 {
		ok, err := s.Allowed(context.Background(), alice, "team-b", "vault")
		require.NoError(t, err)
		assert.True(t, ok)
	}
	assert.EqualValues(t, 1, calls.Load(), "cached")
	assert.Equal(t, authorizationv1.ResourceAttributes{Namespace: "team-b", Verb: "use", Group: "sops-webhook.io", Resource: "keys", Name: "vault"}, *got.Spec.ResourceAttributes)
	assert.Equal(t, []string{"devs"}, got.Spec.Groups)

	ok, err := s.Allowed(context.Background(), authenticationv1.UserInfo{Username: "bob"}, "team-b", "vault")
	require.NoError(t, err)
	assert.False(t, ok)
	_, _ = s.Allowed(context.Background(), alice, "team-c", "vault")
	assert.EqualValues(t, 3, calls.Load(), "another user or namespace is another question")

	now = now.Add(2 * time.Minute)
	_, _ = s.Allowed(context.Background(), alice, "team-b", "vault")
	assert.EqualValues(t, 4, calls.Load(), "asked again after the TTL")
}

func TestNamespacesCachesLabels(t *testing.T) {
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "payments", Labels: map[string]string{"tier": "prod"}}})
	now := time.Now()
	n := NewNamespaces(client, time.Minute, func() time.Time { return now })
	l, err := n.Labels(context.Background(), "payments")
	require.NoError(t, err)
	assert.Equal(t, "prod", l["tier"])
	ns, err := client.CoreV1().Namespaces().Get(context.Background(), "payments", metav1.GetOptions{})
	require.NoError(t, err)
	ns.Labels = nil
	_, err = client.CoreV1().Namespaces().Update(context.Background(), ns, metav1.UpdateOptions{})
	require.NoError(t, err)
	l, _ = n.Labels(context.Background(), "payments")
	assert.Equal(t, "prod", l["tier"], "cached")
	now = now.Add(2 * time.Minute)
	l, _ = n.Labels(context.Background(), "payments")
	assert.Empty(t, l, "re-read after the TTL")
	_, err = n.Labels(context.Background(), "ghost")
	assert.Error(t, err)
}
