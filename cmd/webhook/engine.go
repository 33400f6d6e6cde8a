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
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
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
	// generated keeps the generated keys; nil without API access.
	generated *clusterkeys.Store
	// recipients is where the recipients are published; nil: nowhere.
	recipients corev1client.ConfigMapInterface
	// recipientsName is that ConfigMap's name.
	recipientsName string
	// backupsName is the ConfigMap, beside the recipients one, where the
	// generations' backups are published when break-glass recipients are
	// configured.
	backupsName string
}

// buildEngine loads the keys of cfg and builds its policy. Errors name the
// field, never key material. The caller owns the ring and closes it when
// the Engine is no longer used.
func buildEngine(cfg *config, gen *clusterkeys.Keys, deps engineDeps) (mutate.Engine, *keysource.Ring, error) {
	ring, err := cfg.loadRing(gen, keysource.WithCache(deps.cacheSize, deps.cacheTTL, nil), keysource.WithStats(deps.stats))
	if err != nil {
		return mutate.Engine{}, nil, err
	}
	eng := mutate.Engine{Decryptor: decrypt.New(ring, decrypt.WithResultCache(deps.cacheTTL, deps.resultCacheBytes))}
	if gen != nil {
		eng.Rewrap = cfg.rewrapTargets(gen, ring)
	}
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

// engine is an Engine with the key ring it owns and what it was built
// from.
type engine struct {
	mutate.Engine
	ring *keysource.Ring
	cfg  *config
	gen  *clusterkeys.Keys
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
	// publishPending is set while the current config's recipients are
	// not published: each check tries again.
	publishPending bool

	// loaded is the fingerprint of what current was built from; rejected
	// that of the last config refused, so it is logged once.
	loaded, rejected [sha256.Size]byte
}

// newReloader loads the config at path, failing on any error: at startup an
// invalid config stops the webhook.
func newReloader(path string, deps engineDeps, log logr.Logger) (*reloader, []string, error) {
	r := &reloader{path: path, deps: deps, log: log}
	cfg, gen, fp, err := r.read()
	if err != nil {
		return nil, nil, err
	}
	eng, ring, err := buildEngine(cfg, gen, deps)
	if err != nil {
		return nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	r.current.Store(&engine{eng, ring, cfg, gen})
	r.loaded = fp
	log.Info("policy", "grants", cfg.grants())
	logGenerations(log, gen)
	r.publish()
	return r, ring.Names(), nil
}

// logGenerations logs each generated key's generations: numbers, states
// and recipients, which are public.
func logGenerations(log logr.Logger, gen *clusterkeys.Keys) {
	if gen == nil {
		return
	}
	for _, k := range gen.Keys {
		var gens []string
		for _, g := range k.Generations {
			gens = append(gens, fmt.Sprintf("%d %s %s", g.Number, g.State, g.Recipient))
		}
		log.Info("generated key", "key", k.Name, "generations", gens)
	}
}

// publish writes the current config's recipients to the recipients
// ConfigMap, if there is one; on failure the next check tries again.
func (r *reloader) publish() {
	if r.deps.recipients == nil {
		return
	}
	cur := r.current.Load()
	ctx, cancel := context.WithTimeout(context.Background(), apiCallTimeout)
	defer cancel()
	err := clusterkeys.Publish(ctx, r.deps.recipients, r.deps.recipientsName, cur.cfg.recipients(cur.ring, cur.gen))
	if err == nil && r.deps.backupsName != "" && cur.cfg.backedUp() {
		err = clusterkeys.PublishData(ctx, r.deps.recipients, r.deps.backupsName, "key-backups", clusterkeys.BackupsData(cur.gen))
	}
	if err != nil && !r.publishPending {
		r.log.Error(err, "publishing the recipients failed; retrying at each config check")
	}
	r.publishPending = err != nil
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

// read loads the config and the generated keys (generating those that
// have no current generation), and fingerprints them with the key files
// the config names.
func (r *reloader) read() (*config, *clusterkeys.Keys, [sha256.Size]byte, error) {
	var fp [sha256.Size]byte
	raw, err := os.ReadFile(r.path)
	if err != nil {
		return nil, nil, fp, fmt.Errorf("config: %w", err)
	}
	cfg, err := parseConfig(r.path, raw)
	if err != nil {
		return nil, nil, fp, err
	}
	h := sha256.New()
	h.Write(raw)
	for _, f := range cfg.keyFiles() {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, fp, fmt.Errorf("config %s: key file %s: %w", r.path, f, err)
		}
		h.Write([]byte{0})
		h.Write(b)
	}
	var gen *clusterkeys.Keys
	if specs := cfg.specs(); len(specs) > 0 {
		if r.deps.generated == nil {
			return nil, nil, fp, fmt.Errorf("config %s: generated keys need API access and --namespace: run in a cluster or pass --kubeconfig", r.path)
		}
		ctx, cancel := context.WithTimeout(context.Background(), apiCallTimeout)
		defer cancel()
		if gen, err = r.deps.generated.Sync(ctx, specs); err != nil {
			return nil, nil, fp, fmt.Errorf("config %s: generated keys: %w", r.path, err)
		}
		h.Write([]byte{0})
		h.Write([]byte(gen.Version))
	}
	h.Sum(fp[:0])
	return cfg, gen, fp, nil
}

// check reloads when the config or a key file changed.
func (r *reloader) check() {
	cfg, gen, fp, err := r.read()
	if err == nil && bytes.Equal(fp[:], r.loaded[:]) {
		if r.publishPending {
			r.publish()
		}
		return
	}
	if err == nil {
		var (
			eng  mutate.Engine
			ring *keysource.Ring
		)
		if eng, ring, err = buildEngine(cfg, gen, r.deps); err == nil {
			r.swap(&engine{eng, ring, cfg, gen})
			r.loaded = fp
			r.log.Info("config reloaded", "keys", cfg.names(), "grants", cfg.grants())
			logGenerations(r.log, gen)
			r.publish()
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
