package policy

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// The RBAC a rule with RequireRBAC asks of the requesting user: verb use on
// resource keys in API group sops-webhook.io, named after the key.
const (
	RBACGroup    = "sops-webhook.io"
	RBACResource = "keys"
	RBACVerb     = "use"
)

// Kinds a rule may name.
const (
	KindSecret    = "Secret"
	KindConfigMap = "ConfigMap"
)

// Rule grants keys to the namespaces it matches, for the kinds it names.
type Rule struct {
	Keys []string
	// Namespaces are names or globs (path.Match syntax: *, ?, [a-z]).
	Namespaces []string
	// NamespaceSelector, when not nil, also matches namespaces by label.
	NamespaceSelector labels.Selector
	// Kinds are Secret and/or ConfigMap; empty means Secret only.
	Kinds []string
	// RequireRBAC also requires the requesting user to hold verb use on
	// keys.sops-webhook.io/<key> in the namespace.
	RequireRBAC bool
}

// String summarizes what r grants, keys × kinds × namespaces, as in
// "keys team-a: Secret in namespaces team-a, team-a-*; requireRBAC". Empty
// kinds read as Secret, as New takes them.
func (r Rule) String() string {
	kinds := r.Kinds
	if len(kinds) == 0 {
		kinds = []string{KindSecret}
	}
	where := []string{}
	if len(r.Namespaces) > 0 {
		where = append(where, "namespaces "+strings.Join(r.Namespaces, ", "))
	}
	if r.NamespaceSelector != nil {
		where = append(where, "namespaces labelled "+r.NamespaceSelector.String())
	}
	s := fmt.Sprintf("keys %s: %s in %s", strings.Join(r.Keys, ", "), strings.Join(kinds, ", "), strings.Join(where, " or "))
	if r.RequireRBAC {
		s += "; requireRBAC"
	}
	return s
}

// NamespaceLabels returns the labels of a namespace.
type NamespaceLabels interface {
	Labels(ctx context.Context, namespace string) (map[string]string, error)
}

// Authorizer reports whether user may use key in namespace.
type Authorizer interface {
	Allowed(ctx context.Context, user authenticationv1.UserInfo, namespace, key string) (bool, error)
}

// Policy is a validated set of rules. It is immutable and safe for
// concurrent use.
type Policy struct {
	rules []Rule
	// byKey lists, for each key, the rules that name it, in order: a
	// request's check costs what its key's rules cost, however many there
	// are in all.
	byKey      map[string][]int
	namespaces NamespaceLabels
	authorizer Authorizer
}

// New validates rules against the configured key names and returns a
// Policy. namespaces is needed when a rule has a selector, authorizer when a
// rule requires RBAC. Errors name the rule (1-based) and the field.
func New(rules []Rule, keys []string, namespaces NamespaceLabels, authorizer Authorizer) (*Policy, error) {
	var errs []error
	out := make([]Rule, len(rules))
	for i, r := range rules {
		fail := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("policy rule %d: "+format, append([]any{i + 1}, a...)...))
		}
		if len(r.Keys) == 0 {
			fail("keys: at least one key")
		}
		for _, k := range r.Keys {
			if !slices.Contains(keys, k) {
				fail("keys: %q is not a configured key", k)
			}
		}
		if len(r.Namespaces) == 0 && r.NamespaceSelector == nil {
			fail("namespaces or namespaceSelector is required")
		}
		for _, ns := range r.Namespaces {
			if _, err := path.Match(ns, ""); err != nil {
				fail("namespaces: %q is not a valid glob", ns)
			}
		}
		if r.NamespaceSelector != nil && namespaces == nil {
			fail("namespaceSelector needs namespace access")
		}
		if len(r.Kinds) == 0 {
			r.Kinds = []string{KindSecret}
		}
		for _, k := range r.Kinds {
			if k != KindSecret && k != KindConfigMap {
				fail("kinds: %q is not Secret or ConfigMap", k)
			}
		}
		if r.RequireRBAC && authorizer == nil {
			fail("requireRBAC needs an authorizer")
		}
		out[i] = r
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	byKey := map[string][]int{}
	for i, r := range out {
		for _, k := range r.Keys {
			if l := byKey[k]; len(l) == 0 || l[len(l)-1] != i {
				byKey[k] = append(l, i)
			}
		}
	}
	return &Policy{rules: out, byKey: byKey, namespaces: namespaces, authorizer: authorizer}, nil
}

// Access returns the keys user may use for an object of kind in namespace.
func (p *Policy) Access(namespace, kind string, user authenticationv1.UserInfo) keysource.Access {
	return &access{p: p, namespace: namespace, kind: kind, user: user}
}

type access struct {
	p         *Policy
	namespace string
	kind      string
	user      authenticationv1.UserInfo
}

// Allowed grants key when a rule names it, the kind and the namespace, and,
// if every such rule requires RBAC, when the user holds verb use on it.
func (a *access) Allowed(ctx context.Context, key string) error {
	granted, needRBAC := false, true
	for _, i := range a.p.byKey[key] {
		r := a.p.rules[i]
		if !slices.Contains(r.Kinds, a.kind) {
			continue
		}
		ok, err := a.matchNamespace(ctx, r)
		if err != nil {
			return fmt.Errorf("key %q: cannot read the labels of namespace %q (%v): %w", key, a.namespace, err, keysource.ErrCheckFailed)
		}
		if ok {
			granted = true
			if !r.RequireRBAC {
				needRBAC = false
				break
			}
		}
	}
	if !granted {
		return fmt.Errorf("key %q is not granted to %ss in namespace %q: %w", key, a.kind, a.namespace, keysource.ErrNotGranted)
	}
	if !needRBAC {
		return nil
	}
	ok, err := a.p.authorizer.Allowed(ctx, a.user, a.namespace, key)
	if err != nil {
		return fmt.Errorf("key %q: the RBAC check failed (%v): %w", key, err, keysource.ErrCheckFailed)
	}
	if !ok {
		return fmt.Errorf("user %q may not use key %q in namespace %q: grant verb %q on %s.%s named %q with a Role: %w",
			a.user.Username, key, a.namespace, RBACVerb, RBACResource, RBACGroup, key, keysource.ErrNotGranted)
	}
	return nil
}

func (a *access) matchNamespace(ctx context.Context, r Rule) (bool, error) {
	for _, pattern := range r.Namespaces {
		if ok, _ := path.Match(pattern, a.namespace); ok {
			return true, nil
		}
	}
	if r.NamespaceSelector == nil {
		return false, nil
	}
	l, err := a.p.namespaces.Labels(ctx, a.namespace)
	if err != nil {
		return false, err
	}
	return r.NamespaceSelector.Matches(labels.Set(l)), nil
}
