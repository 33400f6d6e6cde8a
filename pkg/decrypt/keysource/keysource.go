package keysource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/getsops/sops/v3/keyservice"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
)

// MaxKeyFileSize caps how much of a configured key file is read.
const MaxKeyFileSize = 1 << 20

// MaxDataKeySize caps an unwrapped data key or Shamir share. sops data keys are
// 32 bytes; Shamir shares add a byte per part.
const MaxDataKeySize = 1024

// MaxWrappedKeySize caps one wrapped data key in a payload's metadata before
// any key touches it.
const MaxWrappedKeySize = 16 << 10

// ErrNotHeld is returned by Source.Unwrap when the source holds no key that
// opens the wrapped data key.
var ErrNotHeld = errors.New("not held by this key")

// ErrNoKey is returned by Client.Decrypt when no configured Source opens the
// wrapped key: the payload names a key we do not hold, or a key type (cloud
// KMS, Vault, ...) no Source handles. Such a key is never contacted.
var ErrNoKey = errors.New("no configured key opens it")

// Source is one configured key, named in the webhook's config.
type Source interface {
	// Name returns the key's name from the config.
	Name() string
	// Unwrap returns the data key that ciphertext wraps for key, or an error
	// wrapping ErrNotHeld when this source cannot open it. Errors never hold
	// key material or plaintext.
	Unwrap(ctx context.Context, key *keyservice.Key, ciphertext []byte) ([]byte, error)
}

// Ring is the immutable set of configured keys, with the cache of the data
// keys they unwrapped. It is safe for concurrent use.
type Ring struct {
	sources []Source
	cache   *dataKeyCache
	stats   Stats
	// failed remembers unwraps by Local sources that failed.
	failed *failedCache
	// cpu bounds the Local unwraps running at once.
	cpu *semaphore.Weighted
	// byRecipient indexes the sources that are Matchers by the age
	// recipients (retired ones too) and PGP fingerprints they hold;
	// unmatched lists the others (KMS, Vault), which any key may concern.
	byRecipient map[string][]int
	unmatched   []int
}

// indexed is implemented by the Matchers the Ring indexes: indexKeys
// returns every age recipient or PGP fingerprint (upper-case) the source
// answers to.
type indexed interface {
	Matcher
	indexKeys() []string
}

func (a *Age) indexKeys() []string {
	out := make([]string, 0, len(a.recipients)+len(a.retired))
	for r := range a.recipients {
		out = append(out, r)
	}
	for r := range a.retired {
		out = append(out, r)
	}
	return out
}

func (p *PGP) indexKeys() []string {
	out := make([]string, 0, len(p.fingerprints))
	for f := range p.fingerprints {
		out = append(out, f)
	}
	return out
}

// candidates returns, in config order, the sources that may concern key:
// those indexed under its recipient or fingerprint, and every source that
// is not indexed. A request's cost so does not grow with the number of
// age and PGP keys configured.
func (r *Ring) candidates(key *keyservice.Key) []int {
	var id string
	switch {
	case key.GetAgeKey() != nil:
		id = key.GetAgeKey().Recipient
	case key.GetPgpKey() != nil:
		id = strings.ToUpper(key.GetPgpKey().Fingerprint)
	}
	matched := r.byRecipient[id]
	if len(matched) == 0 {
		return r.unmatched
	}
	if len(r.unmatched) == 0 {
		return matched
	}
	out := make([]int, 0, len(matched)+len(r.unmatched))
	out = append(append(out, matched...), r.unmatched...)
	slices.Sort(out)
	return out
}

// Stats observes a Ring's unwraps; its methods may be nil.
type Stats struct {
	// CacheLookup is called on every cache lookup with its result.
	CacheLookup func(hit bool)
	// Unwrap is called after a Source was asked to unwrap, with the key's
	// name and whether it opened the data key.
	Unwrap func(key string, opened bool)
	// Generation is called when a generation of a generated key opened a
	// data key (from the cache too), or, retired, was named by a payload
	// that may use the key.
	Generation func(key string, generation int, retired bool)
}

// RingOption configures a Ring.
type RingOption func(*Ring)

// WithCache caches up to size unwrapped data keys for ttl each. Size or ttl
// 0 disables the cache. now is the clock (nil: time.Now).
func WithCache(size int, ttl time.Duration, now func() time.Time) RingOption {
	if now == nil {
		now = time.Now
	}
	return func(r *Ring) { r.cache = newDataKeyCache(size, ttl, now) }
}

// WithStats reports the Ring's cache lookups and unwraps to s.
func WithStats(s Stats) RingOption { return func(r *Ring) { r.stats = s } }

// NewRing returns a Ring of the given sources, with no cache. It fails when
// there are none or when two share a name: an empty identity set is an error,
// never a reason to fall back to sops' own key lookups.
func NewRing(sources ...Source) (*Ring, error) {
	return NewRingWith(sources, nil)
}

// NewRingWith is NewRing with options.
func NewRingWith(sources []Source, opts []RingOption) (*Ring, error) {
	if len(sources) == 0 {
		return nil, errors.New("no keys configured")
	}
	seen := make(map[string]bool, len(sources))
	for _, s := range sources {
		if seen[s.Name()] {
			return nil, fmt.Errorf("key name %q is used twice", s.Name())
		}
		seen[s.Name()] = true
	}
	r := &Ring{sources: append([]Source(nil), sources...), failed: newFailedCache(nil), cpu: newCPUSlots(runtime.GOMAXPROCS(0) - 1), byRecipient: map[string][]int{}}
	for i, s := range r.sources {
		ix, ok := s.(indexed)
		if !ok {
			r.unmatched = append(r.unmatched, i)
			continue
		}
		for _, k := range ix.indexKeys() {
			if l := r.byRecipient[k]; len(l) == 0 || l[len(l)-1] != i {
				r.byRecipient[k] = append(l, i)
			}
		}
	}
	for _, o := range opts {
		o(r)
	}
	return r, nil
}

// Close releases what the Ring's sources hold open (a cloud client and its
// connections). It is called when a config reload replaced the Ring and no
// request uses it any more; unwraps through a closed Ring fail.
func (r *Ring) Close() error {
	var errs []error
	for _, s := range r.sources {
		if c, ok := s.(io.Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("key %q: %w", s.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// Names returns the configured key names in config order.
func (r *Ring) Names() []string {
	names := make([]string, len(r.sources))
	for i, s := range r.sources {
		names[i] = s.Name()
	}
	return names
}

// Recipients returns the public recipients of the key named name when it
// is an age or PGP key (age recipients, PGP primary fingerprints), with
// its type, "age" or "pgp"; "" for other keys.
func (r *Ring) Recipients(name string) (typ string, recipients []string) {
	for _, s := range r.sources {
		if s.Name() != name {
			continue
		}
		switch s := s.(type) {
		case *Age:
			return "age", s.Recipients()
		case *PGP:
			return "pgp", s.Recipients()
		}
	}
	return "", nil
}

// Client returns a key service client for one decryption. ctx bounds every
// unwrap it performs; access (nil: all keys) decides which keys it may use.
func (r *Ring) Client(ctx context.Context, access Access) *Client {
	return &Client{ctx: ctx, ring: r, access: access}
}

// Client is a sops keyservice.KeyServiceClient backed by a Ring. It is meant
// for a single decryption and records the names of the keys it used, and
// the denials of keys the payload was meant for.
type Client struct {
	ctx    context.Context
	ring   *Ring
	access Access

	mu          sync.Mutex
	used        map[string]bool
	retired     []error
	denied      []error
	failures    []error
	checkFailed []error
	exhausted   []error
}

var _ keyservice.KeyServiceClient = (*Client)(nil)

// Decrypt unwraps req.Ciphertext with the first configured key that the
// Access allows and that opens it: from the cache when it opened the same
// wrapped key before, else by asking the Source. It never contacts a key that
// is not configured or not allowed, and asks a Source that is a Matcher only
// for keys it matches (its recipient, fingerprint or allowed locator).
// Each unwrap a Source runs is drawn from the request's budget
// (WithRequestBudget), a Local one in a CPU slot; one by a Local source
// that failed is remembered for failedTTL and fails again without work.
// The ctx argument is ignored in favour of the Client's own: sops passes
// context.Background.
func (c *Client) Decrypt(_ context.Context, req *keyservice.DecryptRequest, _ ...grpc.CallOption) (*keyservice.DecryptResponse, error) {
	if err := c.ctx.Err(); err != nil {
		return nil, err
	}
	if req.GetKey() == nil {
		return nil, ErrNoKey
	}
	if len(req.Ciphertext) > MaxWrappedKeySize {
		return nil, fmt.Errorf("wrapped data key is larger than %d bytes", MaxWrappedKeySize)
	}
	var errs []error
	for _, i := range c.ring.candidates(req.Key) {
		s := c.ring.sources[i]
		if err := allowed(c.ctx, c.access, s); err != nil {
			switch m, ok := s.(Matcher); {
			case errors.Is(err, ErrCheckFailed):
				// No decision: whichever key this is, it might have opened
				// the payload.
				c.record(&c.checkFailed, err)
			case ok && m.Matches(req.Key):
				c.record(&c.denied, err)
			}
			continue
		}
		if r, ok := s.(RetiredMatcher); ok {
			if n := r.RetiredGeneration(req.Key); n > 0 {
				c.record(&c.retired, fmt.Errorf("key %q generation %d is retired", s.Name(), n))
				if c.ring.stats.Generation != nil {
					c.ring.stats.Generation(s.Name(), n, true)
				}
				continue
			}
		}
		if m, ok := s.(Matcher); ok && !m.Matches(req.Key) {
			continue
		}
		ck := newCacheKey(s.Name(), req.Key, req.Ciphertext)
		plain, hit := c.ring.cache.Get(ck)
		plain = append([]byte(nil), plain...) // callers may not share the cached slice
		if c.ring.cache != nil && c.ring.stats.CacheLookup != nil {
			c.ring.stats.CacheLookup(hit)
		}
		if !hit {
			budget := budgetOf(c.ctx)
			_, local := s.(Local)
			err, failedBefore := c.ring.failed.Get(ck)
			if !failedBefore {
				if err = budget.start(); err != nil {
					c.record(&c.exhausted, err)
					return nil, err
				}
				plain, err = c.unwrap(s, local, req)
				if c.ring.stats.Unwrap != nil {
					c.ring.stats.Unwrap(s.Name(), err == nil)
				}
				if err != nil && local && c.ctx.Err() == nil {
					c.ring.failed.Put(ck, err, 1)
				}
			}
			if err != nil {
				budget.fail()
				if !errors.Is(err, ErrNotHeld) {
					err = fmt.Errorf("key %q: %w", s.Name(), err)
					errs = append(errs, err)
					c.record(&c.failures, err)
				}
				continue
			}
			if len(plain) > MaxDataKeySize {
				return nil, fmt.Errorf("unwrapped data key is larger than %d bytes", MaxDataKeySize)
			}
			c.ring.cache.Put(ck, append([]byte(nil), plain...), 1)
		}
		c.markUsed(usedName(s, req.Key))
		if g, ok := s.(Generational); ok && c.ring.stats.Generation != nil {
			if n := g.Generation(req.Key); n > 0 {
				c.ring.stats.Generation(s.Name(), n, false)
			}
		}
		return &keyservice.DecryptResponse{Plaintext: plain}, nil
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, ErrNoKey
}

// unwrap asks s, in a CPU slot when it is local.
func (c *Client) unwrap(s Source, local bool, req *keyservice.DecryptRequest) ([]byte, error) {
	if local {
		if err := c.ring.cpu.Acquire(c.ctx, 1); err != nil {
			return nil, err
		}
		defer c.ring.cpu.Release(1)
	}
	return s.Unwrap(c.ctx, req.Key, req.Ciphertext)
}

// Retired returns the errors of allowed keys whose retired generation the
// payload names.
func (c *Client) Retired() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.retired...)
}

// Exhausted returns the errors of unwraps refused because the request's
// budget was spent (ErrTooManyUnwraps).
func (c *Client) Exhausted() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.exhausted...)
}

// record appends err to one of the Client's lists.
func (c *Client) record(list *[]error, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*list = append(*list, err)
}

// Failures returns the errors of allowed keys that could not be used (a
// malformed wrapped key, a key service down). Source errors never hold key
// material or plaintext.
func (c *Client) Failures() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.failures...)
}

// CheckFailed returns the Access errors that wrap ErrCheckFailed: keys
// whose grant could not be decided.
func (c *Client) CheckFailed() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.checkFailed...)
}

// Denied returns the Access errors for keys the payload's metadata names
// but this request may not use, in the order met.
func (c *Client) Denied() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.denied...)
}

// Encrypt always fails: the webhook only decrypts.
func (c *Client) Encrypt(context.Context, *keyservice.EncryptRequest, ...grpc.CallOption) (*keyservice.EncryptResponse, error) {
	return nil, errors.New("the webhook does not encrypt")
}

func (c *Client) markUsed(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.used == nil {
		c.used = make(map[string]bool)
	}
	c.used[name] = true
}

// Used returns the sorted names of the configured keys that unwrapped a data
// key through this Client; a generated key's name carries the generation
// that opened it, as "name@number" (KeyName strips it).
func (c *Client) Used() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.used))
	for n := range c.used {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Generational is implemented by Sources whose key has generations.
// Generation returns the generation that key's metadata names, or 0.
type Generational interface {
	Generation(key *keyservice.Key) int
}

// RetiredMatcher is implemented by Sources that recognise the recipients
// of their retired generations. RetiredGeneration returns the retired
// generation that key's metadata names, or 0.
type RetiredMatcher interface {
	RetiredGeneration(key *keyservice.Key) int
}

// generationSep separates a key's name from its generation in the names
// Client.Used reports. Key names never contain it.
const generationSep = "@"

// usedName is the name Used reports for s opening key.
func usedName(s Source, key *keyservice.Key) string {
	if g, ok := s.(Generational); ok {
		if n := g.Generation(key); n > 0 {
			return s.Name() + generationSep + strconv.Itoa(n)
		}
	}
	return s.Name()
}

// KeyName returns the configured key's name in a name Client.Used
// reported, without its generation.
func KeyName(used string) string {
	name, _, _ := strings.Cut(used, generationSep)
	return name
}

// readKeyFile reads a configured key file, refusing one over MaxKeyFileSize.
// Its errors name the file, never its content.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > MaxKeyFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxKeyFileSize)
	}
	buf := make([]byte, st.Size())
	if _, err := f.ReadAt(buf, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return buf, nil
}
