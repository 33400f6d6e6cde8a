package policy

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DefaultCacheTTL is how long an RBAC decision or a namespace's labels are
// reused: revoking a RoleBinding or relabelling a namespace takes effect
// within it.
const DefaultCacheTTL = 10 * time.Second

// maxCached bounds each cache; past it, the cache starts over.
const maxCached = 4096

// ttlCache is a small bounded cache with one TTL.
type ttlCache[K comparable, V any] struct {
	mu  sync.Mutex
	ttl time.Duration
	now func() time.Time
	m   map[K]ttlEntry[V]
}

type ttlEntry[V any] struct {
	v       V
	expires time.Time
}

func (c *ttlCache[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || c.now().After(e.expires) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *ttlCache[K, V]) put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCached {
		c.m = map[K]ttlEntry[V]{}
	}
	c.m[k] = ttlEntry[V]{v: v, expires: c.now().Add(c.ttl)}
}

// SubjectAccessReviews is an Authorizer that asks the API server with a
// SubjectAccessReview for verb use on keys.sops-webhook.io/<key>, and
// reuses each answer for its TTL.
type SubjectAccessReviews struct {
	client kubernetes.Interface
	cache  ttlCache[[sha256.Size]byte, bool]
}

// NewSubjectAccessReviews returns an Authorizer using client, caching each
// decision for ttl.
func NewSubjectAccessReviews(client kubernetes.Interface, ttl time.Duration, now func() time.Time) *SubjectAccessReviews {
	if now == nil {
		now = time.Now
	}
	return &SubjectAccessReviews{client: client, cache: ttlCache[[sha256.Size]byte, bool]{ttl: ttl, now: now}}
}

// Allowed asks whether user may use key in namespace.
func (s *SubjectAccessReviews) Allowed(ctx context.Context, user authenticationv1.UserInfo, namespace, key string) (bool, error) {
	k := reviewKey(user, namespace, key)
	if ok, hit := s.cache.get(k); hit {
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
	s.cache.put(k, review.Status.Allowed)
	return review.Status.Allowed, nil
}

// reviewKey hashes everything a decision depends on, each part length
// prefixed so no two requests share a key.
func reviewKey(user authenticationv1.UserInfo, namespace, key string) [sha256.Size]byte {
	h := sha256.New()
	write := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	write(user.Username)
	write(user.UID)
	for _, g := range user.Groups {
		write("g:" + g)
	}
	names := make([]string, 0, len(user.Extra))
	for name := range user.Extra {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		write("x:" + name)
		for _, v := range user.Extra[name] {
			write(v)
		}
	}
	write(namespace)
	write(key)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// Namespaces reads namespace labels from the API server and reuses them for
// their TTL.
type Namespaces struct {
	client kubernetes.Interface
	cache  ttlCache[string, map[string]string]
}

// NewNamespaces returns a NamespaceLabels using client, caching for ttl.
func NewNamespaces(client kubernetes.Interface, ttl time.Duration, now func() time.Time) *Namespaces {
	if now == nil {
		now = time.Now
	}
	return &Namespaces{client: client, cache: ttlCache[string, map[string]string]{ttl: ttl, now: now}}
}

// Labels returns the namespace's labels.
func (n *Namespaces) Labels(ctx context.Context, namespace string) (map[string]string, error) {
	if l, ok := n.cache.get(namespace); ok {
		return l, nil
	}
	ns, err := n.client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	n.cache.put(namespace, ns.Labels)
	return ns.Labels, nil
}
