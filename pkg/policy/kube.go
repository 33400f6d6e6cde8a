package policy

import (
	"context"
	"crypto/sha256"
	"slices"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sops-webhook/sops-webhook/pkg/internal/lru"
)

// DefaultCacheTTL is how long an RBAC decision or a namespace's labels are
// reused: revoking a RoleBinding or relabelling a namespace takes effect
// within it.
const DefaultCacheTTL = 10 * time.Second

// maxCached bounds each cache: least recently used entries go first.
const maxCached = 4096

// SubjectAccessReviews is an Authorizer that asks the API server with a
// SubjectAccessReview for verb use on keys.sops-webhook.io/<key>, and
// reuses each answer for its TTL.
type SubjectAccessReviews struct {
	client kubernetes.Interface
	cache  *lru.Cache[[sha256.Size]byte, bool]
}

// NewSubjectAccessReviews returns an Authorizer using client, caching each
// decision for ttl.
func NewSubjectAccessReviews(client kubernetes.Interface, ttl time.Duration, now func() time.Time) *SubjectAccessReviews {
	return &SubjectAccessReviews{client: client, cache: lru.New[[sha256.Size]byte, bool](maxCached, ttl, now)}
}

// Allowed asks whether user may use key in namespace.
func (s *SubjectAccessReviews) Allowed(ctx context.Context, user authenticationv1.UserInfo, namespace, key string) (bool, error) {
	k := reviewKey(user, namespace, key)
	if ok, hit := s.cache.Get(k); hit {
		return ok, nil
	}
	extra := make(map[string]authorizationv1.ExtraValue, len(user.Extra))
	for name, v := range user.Extra {
		extra[name] = authorizationv1.ExtraValue(v)
	}
	review, err := s.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user.Username, Groups: user.Groups, UID: user.UID, Extra: extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: namespace, Verb: RBACVerb, Group: RBACGroup, Resource: RBACResource, Name: key,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	s.cache.Put(k, review.Status.Allowed, 1)
	return review.Status.Allowed, nil
}

// reviewKey is the cache key of a decision: everything it depends on
// (lru.KeyOf), each list entry tagged with what it is.
func reviewKey(user authenticationv1.UserInfo, namespace, key string) [sha256.Size]byte {
	parts := []string{"rbac", user.Username, user.UID}
	for _, g := range user.Groups {
		parts = append(parts, "g:"+g)
	}
	names := make([]string, 0, len(user.Extra))
	for name := range user.Extra {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		parts = append(parts, "x:"+name)
		for _, v := range user.Extra[name] {
			parts = append(parts, "v:"+v)
		}
	}
	return lru.KeyOf(append(parts, namespace, key)...)
}

// Namespaces reads namespace labels from the API server and reuses them for
// their TTL.
type Namespaces struct {
	client kubernetes.Interface
	cache  *lru.Cache[string, map[string]string]
}

// NewNamespaces returns a NamespaceLabels using client, caching for ttl.
func NewNamespaces(client kubernetes.Interface, ttl time.Duration, now func() time.Time) *Namespaces {
	return &Namespaces{client: client, cache: lru.New[string, map[string]string](maxCached, ttl, now)}
}

// Labels returns the namespace's labels.
func (n *Namespaces) Labels(ctx context.Context, namespace string) (map[string]string, error) {
	if l, ok := n.cache.Get(namespace); ok {
		return l, nil
	}
	ns, err := n.client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	n.cache.Put(namespace, ns.Labels, 1)
	return ns.Labels, nil
}
