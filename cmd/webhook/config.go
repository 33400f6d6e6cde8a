package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/policy"
)

// Config API version and kind (docs/reference.md §3).
const (
	configAPIVersion = "sops-webhook.io/v1alpha1"
	configKind       = "Config"
)

// minRotateEvery is the shortest rotation period accepted; below it, a
// generation would not outlive the config checks that publish it.
const minRotateEvery = time.Second

// maxConfigSize caps the config file.
const maxConfigSize = 1 << 20

// config is the webhook's config file, owned by the cluster admin.
type config struct {
	APIVersion string      `json:"apiVersion"`
	Kind       string      `json:"kind"`
	Keys       []keyConfig `json:"keys"`
	// Policy grants keys to namespaces and kinds. Absent (nil), every key
	// decrypts Secrets, and only Secrets, in every opted-in namespace; an
	// empty list is refused, since it would grant nothing.
	Policy []ruleConfig `json:"policy,omitempty"`
}

// ruleConfig is one policy rule (docs/reference.md §3).
type ruleConfig struct {
	Keys              []string              `json:"keys"`
	Namespaces        []string              `json:"namespaces,omitempty"`
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	Kinds             []string              `json:"kinds,omitempty"`
	RequireRBAC       bool                  `json:"requireRBAC,omitempty"`
}

// keyConfig is one named key. Exactly one source is set.
type keyConfig struct {
	Name          string        `json:"name"`
	Age           *ageConfig    `json:"age,omitempty"`
	PGP           *pgpConfig    `json:"pgp,omitempty"`
	AWSKMS        *awsKMSConfig `json:"awsKms,omitempty"`
	GCPKMS        *gcpKMSConfig `json:"gcpKms,omitempty"`
	AzureKeyVault *azureConfig  `json:"azureKeyVault,omitempty"`
	VaultTransit  *vaultConfig  `json:"vaultTransit,omitempty"`
	// Generate has the webhook generate the key itself and keep it in the
	// generated keys' Secret (pkg/clusterkeys).
	Generate *generateConfig `json:"generate,omitempty"`
}

// generateConfig is a key the webhook generates (docs/reference.md §3).
type generateConfig struct {
	// Type is x25519 (the default) or hybrid.
	Type clusterkeys.Type `json:"type,omitempty"`
	// RotateEvery makes a new generation current when the current one is
	// this old; absent: clusterkeys.DefaultRotateEvery; 0: never.
	RotateEvery *metav1.Duration `json:"rotateEvery,omitempty"`
	// BreakGlass are age recipients, kept offline, each generation is
	// wrapped for (its backup) before it becomes current.
	BreakGlass []string `json:"breakGlass,omitempty"`
	// BreakGlassKeys name configured awsKms, gcpKms, azureKeyVault or
	// vaultTransit keys, each naming one key, that each generation is
	// sealed for (its sealed backup) before it becomes current.
	BreakGlassKeys []string `json:"breakGlassKeys,omitempty"`
}

// awsKMSConfig is an AWS KMS key, used as the pod's AWS identity.
type awsKMSConfig struct {
	// ARN is a key ARN or a glob of them.
	ARN string `json:"arn"`
	// Endpoint replaces the KMS endpoint (VPC or FIPS endpoints).
	Endpoint string `json:"endpoint,omitempty"`
}

// gcpKMSConfig is a Cloud KMS key, used as the pod's Google identity.
type gcpKMSConfig struct {
	// ResourceID is a crypto key resource ID or a glob of them.
	ResourceID string `json:"resourceID"`
	// Endpoint replaces the KMS endpoint (host:port).
	Endpoint string `json:"endpoint,omitempty"`
}

// azureConfig is an Azure Key Vault key, used as the pod's Workload ID.
type azureConfig struct {
	VaultURL string `json:"vaultURL"`
	// KeyName is a key name or a glob of them.
	KeyName string `json:"keyName"`
}

// vaultConfig is a Vault or OpenBao transit key (docs/reference.md §3).
type vaultConfig struct {
	Address        string `json:"address"`
	EnginePath     string `json:"enginePath"`
	KeyName        string `json:"keyName"`
	CAFile         string `json:"caFile,omitempty"`
	KubernetesAuth struct {
		Role      string `json:"role"`
		MountPath string `json:"mountPath,omitempty"`
		// TokenFile is the service-account token to log in with; the
		// pod's own token by default.
		TokenFile string `json:"tokenFile,omitempty"`
	} `json:"kubernetesAuth"`
}

type ageConfig struct {
	IdentityFile string `json:"identityFile"`
}

type pgpConfig struct {
	PrivateKeyFile string `json:"privateKeyFile"`
}

// loadConfig reads, strictly decodes and validates the config file. Errors
// name the file and the field, never key material.
func loadConfig(path string) (*config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parseConfig(path, raw)
}

// parseConfig strictly decodes and validates a config file's content read
// from path. Errors name the file and the field, never key material.
func parseConfig(path string, raw []byte) (*config, error) {
	if len(raw) > maxConfigSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, maxConfigSize)
	}
	doc, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var c config
	strict, err := sigsjson.UnmarshalStrict(doc, &c)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("config %s: %w", path, errors.Join(strict...))
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

func (c *config) validate() error {
	var errs []error
	if c.APIVersion != configAPIVersion || c.Kind != configKind {
		errs = append(errs, fmt.Errorf("apiVersion/kind must be %s/%s", configAPIVersion, configKind))
	}
	if len(c.Keys) == 0 {
		errs = append(errs, errors.New("keys: at least one key is required"))
	}
	if c.Policy != nil && len(c.Policy) == 0 {
		errs = append(errs, errors.New("policy: an empty list would grant nothing: remove it for the default (every key decrypts Secrets in every opted-in namespace) or add rules"))
	}
	names := map[string]bool{}
	for i, k := range c.Keys {
		at := fmt.Sprintf("keys[%d]", i)
		if k.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name: required", at))
		} else if names[k.Name] {
			errs = append(errs, fmt.Errorf("%s.name: %q is used twice", at, k.Name))
		}
		names[k.Name] = true
		if strings.ContainsAny(k.Name, ",@") {
			errs = append(errs, fmt.Errorf("%s.name: %q may not contain ',' or '@' (they separate names and generations in sops-webhook.io/keys)", at, k.Name))
		}
		set := 0
		for _, present := range []bool{k.Age != nil, k.PGP != nil, k.AWSKMS != nil, k.GCPKMS != nil, k.AzureKeyVault != nil, k.VaultTransit != nil, k.Generate != nil} {
			if present {
				set++
			}
		}
		if set != 1 {
			errs = append(errs, fmt.Errorf("%s (%s): exactly one of generate, age, pgp, awsKms, gcpKms, azureKeyVault, vaultTransit must be set", at, k.Name))
			continue
		}
		switch {
		case k.Generate != nil && !clusterkeys.ValidName(k.Name):
			errs = append(errs, fmt.Errorf("%s.name: a generated key's name must be a DNS label (lower-case letters, digits, '-', '.'; at most 63)", at))
		case k.Generate != nil && k.Generate.Type != "" && k.Generate.Type != clusterkeys.X25519 && k.Generate.Type != clusterkeys.Hybrid:
			errs = append(errs, fmt.Errorf("%s.generate.type: %q is not %s or %s", at, k.Generate.Type, clusterkeys.X25519, clusterkeys.Hybrid))
		case k.Generate != nil && badRecipient(k.Generate.BreakGlass) != nil:
			errs = append(errs, fmt.Errorf("%s.generate.breakGlass: %w", at, badRecipient(k.Generate.BreakGlass)))
		case k.Generate != nil && c.badBreakGlassKey(k.Generate.BreakGlassKeys) != nil:
			errs = append(errs, fmt.Errorf("%s.generate.breakGlassKeys: %w", at, c.badBreakGlassKey(k.Generate.BreakGlassKeys)))
		case k.Generate != nil && len(k.Generate.BreakGlass)+len(k.Generate.BreakGlassKeys) >= decrypt.MaxRewrapRecipients:
			errs = append(errs, fmt.Errorf("%s.generate: at most %d break-glass recipients and keys together", at, decrypt.MaxRewrapRecipients-1))
		case k.Generate != nil && k.Generate.RotateEvery != nil && k.Generate.RotateEvery.Duration != 0 && k.Generate.RotateEvery.Duration < minRotateEvery:
			errs = append(errs, fmt.Errorf("%s.generate.rotateEvery: at least %s, or 0 to never rotate", at, minRotateEvery))
		case k.Age != nil && k.Age.IdentityFile == "":
			errs = append(errs, fmt.Errorf("%s.age.identityFile: required", at))
		case k.PGP != nil && k.PGP.PrivateKeyFile == "":
			errs = append(errs, fmt.Errorf("%s.pgp.privateKeyFile: required", at))
		case k.VaultTransit != nil && (k.VaultTransit.Address == "" || k.VaultTransit.EnginePath == "" || k.VaultTransit.KeyName == "" || k.VaultTransit.KubernetesAuth.Role == ""):
			errs = append(errs, fmt.Errorf("%s.vaultTransit: address, enginePath, keyName and kubernetesAuth.role are required", at))
		case k.AWSKMS != nil && k.AWSKMS.ARN == "":
			errs = append(errs, fmt.Errorf("%s.awsKms.arn: required", at))
		case k.GCPKMS != nil && k.GCPKMS.ResourceID == "":
			errs = append(errs, fmt.Errorf("%s.gcpKms.resourceID: required", at))
		case k.AzureKeyVault != nil && (k.AzureKeyVault.VaultURL == "" || k.AzureKeyVault.KeyName == ""):
			errs = append(errs, fmt.Errorf("%s.azureKeyVault: vaultURL and keyName are required", at))
		}
	}
	return errors.Join(errs...)
}

// rules converts the policy to policy.Rules. Errors name the rule. Without
// a policy section it is the default rule: every key, every namespace,
// Secrets only; ConfigMaps, which the view role can read, need a rule that
// names them.
func (c *config) rules() ([]policy.Rule, error) {
	if c.Policy == nil {
		return []policy.Rule{{Keys: c.names(), Namespaces: []string{"*"}, Kinds: []string{policy.KindSecret}}}, nil
	}
	var errs []error
	out := make([]policy.Rule, 0, len(c.Policy))
	for i, r := range c.Policy {
		rule := policy.Rule{Keys: r.Keys, Namespaces: r.Namespaces, Kinds: r.Kinds, RequireRBAC: r.RequireRBAC}
		if r.NamespaceSelector != nil {
			sel, err := metav1.LabelSelectorAsSelector(r.NamespaceSelector)
			if err != nil {
				errs = append(errs, fmt.Errorf("policy[%d].namespaceSelector: %w", i, err))
				continue
			}
			rule.NamespaceSelector = sel
		}
		out = append(out, rule)
	}
	return out, errors.Join(errs...)
}

// grants summarizes what the policy grants, one line per rule (keys ×
// kinds × namespaces), for the log at startup and on each reload. A config
// whose rules do not convert has no summary: it is refused anyway.
func (c *config) grants() []string {
	rules, err := c.rules()
	if err != nil {
		return nil
	}
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.String()
	}
	return out
}

// needsAPI reports whether the policy reads namespaces or asks RBAC.
func (c *config) needsAPI() bool {
	for _, r := range c.Policy {
		if r.NamespaceSelector != nil || r.RequireRBAC {
			return true
		}
	}
	return false
}

// names returns the configured key names.
func (c *config) names() []string {
	out := make([]string, len(c.Keys))
	for i, k := range c.Keys {
		out[i] = k.Name
	}
	return out
}

// keyFiles are the files the configured keys are read from.
func (c *config) keyFiles() []string {
	var out []string
	for _, k := range c.Keys {
		switch {
		case k.Age != nil:
			out = append(out, k.Age.IdentityFile)
		case k.PGP != nil:
			out = append(out, k.PGP.PrivateKeyFile)
		case k.VaultTransit != nil && k.VaultTransit.CAFile != "":
			out = append(out, k.VaultTransit.CAFile)
		}
	}
	return out
}

// badRecipient returns the error of the first recipient that does not
// parse, or nil.
func badRecipient(recipients []string) error {
	for _, r := range recipients {
		if _, err := keysource.ParseAgeRecipient(r); err != nil {
			return err
		}
	}
	return nil
}

// badBreakGlassKey returns an error for the first name that is not a
// configured KMS or Vault key naming one key, or nil.
func (c *config) badBreakGlassKey(names []string) error {
	for _, name := range names {
		k := c.key(name)
		var locator string
		switch {
		case k == nil:
			return fmt.Errorf("%q is not a configured key", name)
		case k.AWSKMS != nil:
			locator = k.AWSKMS.ARN
		case k.GCPKMS != nil:
			locator = k.GCPKMS.ResourceID
		case k.AzureKeyVault != nil:
			locator = k.AzureKeyVault.KeyName
		case k.VaultTransit != nil:
			locator = k.VaultTransit.KeyName
		default:
			return fmt.Errorf("key %q: only an awsKms, gcpKms, azureKeyVault or vaultTransit key can be a break-glass key (age recipients go in breakGlass)", name)
		}
		if strings.ContainsAny(locator, `*?[\`) {
			return fmt.Errorf("key %q: names a glob of keys; a break-glass key must name one", name)
		}
	}
	return nil
}

// key returns the configured key name, or nil.
func (c *config) key(name string) *keyConfig {
	for i := range c.Keys {
		if c.Keys[i].Name == name {
			return &c.Keys[i]
		}
	}
	return nil
}

// backedUp reports whether a generated key has break-glass recipients or
// keys.
func (c *config) backedUp() bool {
	for _, s := range c.specs() {
		if len(s.BreakGlass) > 0 || s.Seal != nil {
			return true
		}
	}
	return false
}

// specs returns the keys the webhook generates.
func (c *config) specs() []clusterkeys.Spec {
	var out []clusterkeys.Spec
	for _, k := range c.Keys {
		if k.Generate != nil {
			every := clusterkeys.DefaultRotateEvery
			if k.Generate.RotateEvery != nil {
				every = k.Generate.RotateEvery.Duration
			}
			spec := clusterkeys.Spec{Name: k.Name, Type: k.Generate.Type, RotateEvery: every, BreakGlass: k.Generate.BreakGlass}
			if len(k.Generate.BreakGlassKeys) > 0 {
				spec.Seal = c.sealer(k.Generate.BreakGlassKeys)
			}
			out = append(out, spec)
		}
	}
	return out
}

// sealer returns a Spec's Seal for the break-glass keys names: it loads
// those keys afresh (a generation is sealed rarely, and before the ring
// that would hold them is built), seals the identity for all of them and
// closes them.
func (c *config) sealer(names []string) func(context.Context, string) ([]byte, error) {
	return func(ctx context.Context, identity string) ([]byte, error) {
		var wrappers []keysource.Wrapper
		defer func() {
			for _, w := range wrappers {
				if cl, ok := w.(io.Closer); ok {
					_ = cl.Close()
				}
			}
		}()
		for _, name := range names {
			k := c.key(name)
			if k == nil {
				return nil, fmt.Errorf("break-glass key %q is not configured", name)
			}
			s, err := k.source(nil)
			if err != nil {
				return nil, fmt.Errorf("break-glass key %q: %w", name, err)
			}
			w, ok := s.(keysource.Wrapper)
			if !ok {
				return nil, fmt.Errorf("break-glass key %q cannot wrap a data key", name)
			}
			wrappers = append(wrappers, w)
		}
		return decrypt.Seal(ctx, clusterkeys.SealedEntry, identity, wrappers)
	}
}

// loadRing reads every configured key into memory, once; a generated
// key's decrypting generations come from gen.
func (c *config) loadRing(gen *clusterkeys.Keys, opts ...keysource.RingOption) (*keysource.Ring, error) {
	var sources []keysource.Source
	for i, k := range c.Keys {
		s, err := k.source(gen)
		if err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): %w", i, k.Name, err)
		}
		sources = append(sources, s)
	}
	return keysource.NewRingWith(sources, opts)
}

// source loads the key k; a generated key's decrypting generations come
// from gen.
func (k *keyConfig) source(gen *clusterkeys.Keys) (keysource.Source, error) {
	switch {
	case k.Generate != nil:
		return generatedSource(k.Name, gen)
	case k.Age != nil:
		return keysource.LoadAge(k.Name, k.Age.IdentityFile)
	case k.PGP != nil:
		return keysource.LoadPGP(k.Name, k.PGP.PrivateKeyFile)
	case k.AWSKMS != nil:
		return keysource.NewAWSKMS(context.Background(), k.Name, keysource.AWSKMSConfig{ARN: k.AWSKMS.ARN, Endpoint: k.AWSKMS.Endpoint})
	case k.AzureKeyVault != nil:
		return keysource.NewAzureKeyVault(k.Name, keysource.AzureKeyVaultConfig{VaultURL: k.AzureKeyVault.VaultURL, KeyName: k.AzureKeyVault.KeyName})
	case k.GCPKMS != nil:
		return keysource.NewGCPKMS(k.Name, keysource.GCPKMSConfig{ResourceID: k.GCPKMS.ResourceID, Endpoint: k.GCPKMS.Endpoint})
	case k.VaultTransit != nil:
		v := k.VaultTransit
		return keysource.NewVault(k.Name, keysource.VaultConfig{
			Address: v.Address, EnginePath: v.EnginePath, KeyName: v.KeyName, CAFile: v.CAFile,
			Role: v.KubernetesAuth.Role, MountPath: v.KubernetesAuth.MountPath, TokenFile: v.KubernetesAuth.TokenFile,
		})
	}
	return nil, errors.New("no key source set")
}

// generatedSource is the age source of the generated key name: its
// generations that are not retired.
func generatedSource(name string, gen *clusterkeys.Keys) (keysource.Source, error) {
	var key *clusterkeys.Key
	if gen != nil {
		key = gen.Key(name)
	}
	if key == nil {
		return nil, errors.New("not generated yet")
	}
	var gens []keysource.AgeGeneration
	decrypting := 0
	for _, g := range key.Generations {
		retired := g.State == clusterkeys.StateRetired
		if !retired {
			decrypting++
		}
		gens = append(gens, keysource.AgeGeneration{Number: g.Number, Identity: key.Identity(g.Number), Retired: retired})
	}
	if decrypting == 0 {
		return nil, errors.New("every generation is retired")
	}
	return keysource.NewAgeGenerations(name, gens), nil
}

// recipients returns what the webhook publishes for cfg: each key with
// public recipients (generated, age, PGP) and the policy's grants of it.
func (c *config) recipients(ring *keysource.Ring, gen *clusterkeys.Keys) clusterkeys.Recipients {
	rules, _ := c.rules() // a config whose rules do not convert is never loaded
	var out clusterkeys.Recipients
	for _, k := range c.Keys {
		pk := clusterkeys.PublishedKey{Name: k.Name, Grants: []clusterkeys.Grant{}}
		switch typ, rs := ring.Recipients(k.Name); {
		case k.Generate != nil && gen != nil && gen.Key(k.Name) != nil:
			pk.Source, pk.Generations = "generated", gen.Key(k.Name).Generations
		case typ == "age":
			pk.Source, pk.Age = typ, rs
		case typ == "pgp":
			pk.Source, pk.PGP = typ, rs
		default:
			continue // a KMS or Vault key: its locator is in the config
		}
		for _, r := range rules {
			if !slices.Contains(r.Keys, k.Name) {
				continue
			}
			g := clusterkeys.Grant{Namespaces: r.Namespaces, Kinds: r.Kinds, RequireRBAC: r.RequireRBAC}
			if r.NamespaceSelector != nil {
				g.NamespaceSelector = r.NamespaceSelector.String()
			}
			if len(g.Kinds) == 0 {
				g.Kinds = []string{policy.KindSecret}
			}
			pk.Grants = append(pk.Grants, g)
		}
		out.Keys = append(out.Keys, pk)
	}
	return out
}

// rewrapTargets is the Engine's Rewrap for the generated keys gen: a file
// opened by a generation of a generated key gains the key's current
// generation and its break-glass recipients and keys (ring's sources of
// them), and with dropRetired loses its retired generations. A file opened
// by a hand-made key has no generation to move to.
func (c *config) rewrapTargets(gen *clusterkeys.Keys, ring *keysource.Ring) func(opened string, dropRetired bool) (decrypt.RewrapPlan, error) {
	generated := map[string]*generateConfig{}
	for _, k := range c.Keys {
		if k.Generate != nil {
			generated[k.Name] = k.Generate
		}
	}
	return func(opened string, dropRetired bool) (decrypt.RewrapPlan, error) {
		name := keysource.KeyName(opened)
		key := gen.Key(name)
		g, isGenerated := generated[name]
		if !isGenerated || key == nil {
			return decrypt.RewrapPlan{}, fmt.Errorf("key %q opens it, and it is not generated in the cluster: only generated keys have generations to rewrap for", name)
		}
		cur := key.Current()
		if cur == nil {
			return decrypt.RewrapPlan{}, fmt.Errorf("key %q has no current generation", name)
		}
		plan := decrypt.RewrapPlan{Add: append([]string{cur.Recipient}, g.BreakGlass...)}
		for _, n := range g.BreakGlassKeys {
			w, ok := ring.Wrapper(n)
			if !ok {
				return decrypt.RewrapPlan{}, fmt.Errorf("break-glass key %q cannot wrap a data key", n)
			}
			plan.Keys = append(plan.Keys, w)
		}
		for _, gn := range key.Generations {
			if dropRetired && gn.State == clusterkeys.StateRetired {
				plan.Drop = append(plan.Drop, gn.Recipient)
			}
		}
		return plan, nil
	}
}
