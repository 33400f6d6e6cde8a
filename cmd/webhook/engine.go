package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/pkg/policy"
)

// engineDeps are what building an Engine needs besides the config.
type engineDeps struct {
	// kube is nil when the webhook has no API access.
	kube      kubernetes.Interface
	cacheSize int
	cacheTTL  time.Duration
	// resultCacheBytes bounds the decrypted-document cache; 0 disables it.
	resultCacheBytes int
	policyTTL        time.Duration
	stats            keysource.Stats
	// retireAfter is how long a replaced key ring stays open for the
	// requests still using it; then it is closed.
	retireAfter time.Duration
}

// buildEngine loads the keys of cfg and builds its policy. Errors name the
// field, never key material. The caller owns the ring and closes it when
// the Engine is no longer used.
func buildEngine(cfg *config, deps engineDeps) (mutate.Engine, *keysource.Ring, error) {
	ring, err := cfg.loadRing(keysource.WithCache(deps.cacheSize, deps.cacheTTL, nil), keysource.WithStats(deps.stats))
	if err != nil {
		return mutate.Engine{}, nil, err
	}
	eng := mutate.Engine{Decryptor: decrypt.New(ring, decrypt.WithResultCache(deps.cacheTTL, deps.resultCacheBytes))}
	rules, err := cfg.rules()
	if err != nil {
		return mutate.Engine{}, nil, closeOnError(ring, err)
	}
	var (
		namespaces policy.NamespaceLabels
		authorizer policy.Authorizer
	)
	if deps.kube != nil {
		namespaces = policy.NewNamespaces(deps.kube, deps.policyTTL, nil)
		authorizer = policy.NewSubjectAccessReviews(deps.kube, deps.policyTTL, nil)
	} else if cfg.needsAPI() {
		return mutate.Engine{}, nil, closeOnError(ring, errors.New("policy: namespaceSelector and requireRBAC need API access: run in a cluster or pass --kubeconfig"))
	}
	p, err := policy.New(rules, ring.Names(), namespaces, authorizer)
	if err != nil {
		return mutate.Engine{}, nil, closeOnError(ring, err)
	}
	eng.Policy = p
	return eng, ring, nil
}

// closeOnError closes ring when err is set, and returns err.
func closeOnError(ring *keysource.Ring, err error) error {
	if err != nil {
		_ = ring.Close() // nothing was used yet; err is what matters
	}
	return err
}

// engine is an Engine with the key ring it owns.
type engine struct {
	mutate.Engine
	ring *keysource.Ring
}

// reloader holds the current Engine and replaces it when the config file or
// a key file it names changes. An invalid new config is logged and ignored:
// the old Engine keeps serving.
type reloader struct {
	path    string
	deps    engineDeps
	log     logr.Logger
	current atomic.Pointer[engine]
	// onReload reports each reload attempt; it may be nil.
	onReload func(ok bool)

	// loaded is the fingerprint of what current was built from; rejected
	// that of the last config refused, so it is logged once.
	loaded, rejected [sha256.Size]byte
}

// newReloader loads the config at path, failing on any error: at startup an
// invalid config stops the webhook.
func newReloader(path string, deps engineDeps, log logr.Logger) (*reloader, []string, error) {
	r := &reloader{path: path, deps: deps, log: log}
	cfg, fp, err := r.read()
	if err != nil {
		return nil, nil, err
	}
	eng, ring, err := buildEngine(cfg, deps)
	if err != nil {
		return nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	r.current.Store(&engine{eng, ring})
	r.loaded = fp
	log.Info("policy", "grants", cfg.grants())
	return r, ring.Names(), nil
}

// Engine returns the current Engine; it is the handler's engine source.
func (r *reloader) Engine() mutate.Engine { return r.current.Load().Engine }

// swap makes eng current and retires the one it replaces: requests that
// started with the old Engine have retireAfter to finish, then its ring is
// closed.
func (r *reloader) swap(eng *engine) {
	old := r.current.Swap(eng)
	if old == nil {
		return
	}
	time.AfterFunc(r.deps.retireAfter, func() {
		if err := old.ring.Close(); err != nil {
			r.log.Error(err, "closing the replaced key ring")
		}
	})
}

// close closes the current ring, when the webhook stops.
func (r *reloader) close() error { return r.current.Load().ring.Close() }

// read loads the config and fingerprints it with the key files it names.
func (r *reloader) read() (*config, [sha256.Size]byte, error) {
	var fp [sha256.Size]byte
	raw, err := os.ReadFile(r.path)
	if err != nil {
		return nil, fp, fmt.Errorf("config: %w", err)
	}
	cfg, err := parseConfig(r.path, raw)
	if err != nil {
		return nil, fp, err
	}
	h := sha256.New()
	h.Write(raw)
	for _, f := range cfg.keyFiles() {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fp, fmt.Errorf("config %s: key file %s: %w", r.path, f, err)
		}
		h.Write([]byte{0})
		h.Write(b)
	}
	h.Sum(fp[:0])
	return cfg, fp, nil
}

// check reloads when the config or a key file changed.
func (r *reloader) check() {
	cfg, fp, err := r.read()
	if err == nil && bytes.Equal(fp[:], r.loaded[:]) {
		return
	}
	if err == nil {
		var (
			eng  mutate.Engine
			ring *keysource.Ring
		)
		if eng, ring, err = buildEngine(cfg, r.deps); err == nil {
			r.swap(&engine{eng, ring})
			r.loaded = fp
			r.log.Info("config reloaded", "keys", cfg.names(), "grants", cfg.grants())
			if r.onReload != nil {
				r.onReload(true)
			}
			return
		}
		err = fmt.Errorf("config %s: %w", r.path, err)
	}
	if fp == ([sha256.Size]byte{}) {
		fp = sha256.Sum256([]byte(err.Error())) // unreadable: fingerprint the reason
	}
	if fp != r.rejected {
		r.rejected = fp
		r.log.Error(err, "config reload failed; the previous config stays in use")
		if r.onReload != nil {
			r.onReload(false)
		}
	}
}

// run checks every interval until ctx ends.
func (r *reloader) run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return r.close()
		case <-t.C:
			r.check()
		}
	}
}
