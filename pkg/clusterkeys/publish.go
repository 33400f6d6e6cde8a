package clusterkeys

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// DefaultConfigMapName is the ConfigMap, in the webhook's namespace, where
// the recipients are published.
const DefaultConfigMapName = "sops-webhook-recipients"

// The ConfigMap's entries.
const (
	// RecipientsEntry holds Recipients as YAML.
	RecipientsEntry = "recipients.yaml"
	// SopsConfigEntry holds .sops.yaml creation rules.
	SopsConfigEntry = "sops.yaml"
)

// Recipients is what the webhook publishes: every configured key that has
// public recipients, in config order.
type Recipients struct {
	Keys []PublishedKey `json:"keys" yaml:"keys"`
}

// PublishedKey is the public half of one configured key.
type PublishedKey struct {
	Name string `json:"name" yaml:"name"`
	// Source is "generated", "age" or "pgp".
	Source string `json:"source" yaml:"source"`
	// Generations are a generated key's, newest first.
	Generations []Generation `json:"generations,omitempty" yaml:"generations,omitempty"`
	// Age are a hand-made age key's recipients.
	Age []string `json:"age,omitempty" yaml:"age,omitempty"`
	// PGP are a hand-made PGP key's primary fingerprints.
	PGP []string `json:"pgp,omitempty" yaml:"pgp,omitempty"`
	// Grants are the policy rules that grant the key.
	Grants []Grant `json:"grants" yaml:"grants"`
}

// Grant is one policy rule as it applies to a key.
type Grant struct {
	Namespaces        []string `json:"namespaces,omitempty" yaml:"namespaces,omitempty"`
	NamespaceSelector string   `json:"namespaceSelector,omitempty" yaml:"namespaceSelector,omitempty"`
	Kinds             []string `json:"kinds" yaml:"kinds"`
	RequireRBAC       bool     `json:"requireRBAC,omitempty" yaml:"requireRBAC,omitempty"`
}

// encryptFor returns the age recipients and PGP fingerprints to encrypt
// for with k: a generated key's current generation, or a hand-made key's.
func (k PublishedKey) encryptFor() (ages, pgps []string) {
	for _, g := range k.Generations {
		if g.State == StateCurrent {
			ages = append(ages, g.Recipient)
		}
	}
	return append(ages, k.Age...), k.PGP
}

// CreationRule is one .sops.yaml creation rule.
type CreationRule struct {
	PathRegex string `json:"path_regex,omitempty" yaml:"path_regex,omitempty"`
	Age       string `json:"age,omitempty" yaml:"age,omitempty"`
	PGP       string `json:"pgp,omitempty" yaml:"pgp,omitempty"`
}

// SopsConfig is a .sops.yaml file.
type SopsConfig struct {
	CreationRules []CreationRule `json:"creation_rules" yaml:"creation_rules"`
}

// CreationRules returns .sops.yaml creation rules for r, one per
// namespace pattern that a key is granted to by name, in config order:
// files under a directory named after the namespace are encrypted for the
// current recipients of every key granted there. A pattern that grants
// every namespace ("*") becomes the last, catch-all rule. Grants by
// namespaceSelector have no path and are left out.
func (r Recipients) CreationRules() SopsConfig {
	return r.CreationRulesWith(DefaultPathTemplate, nil)
}

// DefaultPathTemplate is the path_regex of a namespace's files: a
// directory named after it, anywhere in the path.
const DefaultPathTemplate = `(^|/){namespace}/`

// CreationRulesWith is CreationRules with the path_regex template (where
// "{namespace}" stands for the namespace pattern, as NamespaceRegex
// writes it) and extra age recipients, such as a break-glass one, added to
// every rule.
func (r Recipients) CreationRulesWith(pathTemplate string, extraAge []string) SopsConfig {
	type rule struct{ ages, pgps []string }
	var (
		order  []string
		byPath = map[string]*rule{}
	)
	for _, k := range r.Keys {
		ages, pgps := k.encryptFor()
		if len(ages)+len(pgps) == 0 {
			continue
		}
		for _, g := range k.Grants {
			for _, ns := range g.Namespaces {
				rl, ok := byPath[ns]
				if !ok {
					rl = &rule{}
					byPath[ns] = rl
					order = append(order, ns)
				}
				rl.ages = appendNew(rl.ages, ages...)
				rl.pgps = appendNew(rl.pgps, pgps...)
			}
		}
	}
	var out SopsConfig
	add := func(pathRegex string, rl *rule) {
		out.CreationRules = append(out.CreationRules, CreationRule{PathRegex: pathRegex, Age: strings.Join(appendNew(rl.ages, extraAge...), ","), PGP: strings.Join(rl.pgps, ",")})
	}
	for _, ns := range order {
		if ns != "*" {
			add(strings.ReplaceAll(pathTemplate, "{namespace}", NamespaceRegex(ns)), byPath[ns])
		}
	}
	if rl, ok := byPath["*"]; ok {
		add("", rl)
	}
	return out
}

// Merge returns the keys of every rs, as one Recipients: what several
// clusters publish, for one rule set that encrypts for all of them.
func Merge(rs ...Recipients) Recipients {
	var out Recipients
	for _, r := range rs {
		out.Keys = append(out.Keys, r.Keys...)
	}
	return out
}

// NamespaceRegex returns a regular expression of the namespaces matching
// pattern (a policy glob: '*' matches any run of characters but '/').
func NamespaceRegex(pattern string) string {
	parts := strings.Split(pattern, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return strings.Join(parts, `[^/]*`)
}

// NamespacePathRegex returns the path_regex of files meant for the
// namespaces matching pattern: a directory of that name anywhere in the
// path.
func NamespacePathRegex(pattern string) string {
	return strings.ReplaceAll(DefaultPathTemplate, "{namespace}", NamespaceRegex(pattern))
}

// appendNew appends the values of vs that list does not hold yet.
func appendNew(list []string, vs ...string) []string {
	for _, v := range vs {
		if !slices.Contains(list, v) {
			list = append(list, v)
		}
	}
	return list
}

// Data returns the ConfigMap data that publishes r.
func (r Recipients) Data() (map[string]string, error) {
	recipients, err := marshalYAML(r)
	if err != nil {
		return nil, err
	}
	rules, err := marshalYAML(r.CreationRules())
	if err != nil {
		return nil, err
	}
	return map[string]string{
		RecipientsEntry: "# The sops-webhook's public recipients (generated by the webhook; edits are overwritten).\n" + recipients,
		SopsConfigEntry: "# .sops.yaml creation rules for files under a directory named after their namespace.\n" + rules,
	}, nil
}

// marshalYAML writes v as YAML with fields in declaration order, indented
// by two spaces as kubectl prints.
func marshalYAML(v any) (string, error) {
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return b.String(), enc.Close()
}

// Publish writes r to the ConfigMap name of configMaps (PublishData).
func Publish(ctx context.Context, configMaps corev1client.ConfigMapInterface, name string, r Recipients) error {
	data, err := r.Data()
	if err != nil {
		return fmt.Errorf("ConfigMap %s: %w", name, err)
	}
	return PublishData(ctx, configMaps, name, "recipients", data)
}

// DefaultBackupsConfigMapName is the ConfigMap, in the webhook's
// namespace, where the generations' backups are published.
const DefaultBackupsConfigMapName = "sops-webhook-key-backups"

// BackupsData returns the backups of keys as ConfigMap data, by
// BackupName and SealedBackupName: ciphertext only the break-glass
// identities and keys open.
func BackupsData(keys *Keys) map[string]string {
	data := map[string]string{}
	if keys == nil {
		return data
	}
	for _, k := range keys.Keys {
		for _, g := range k.Generations {
			if b := k.Backup(g.Number); b != nil {
				data[BackupName(k.Name, g.Number)] = string(b)
			}
			if b := k.SealedBackup(g.Number); b != nil {
				data[SealedBackupName(k.Name, g.Number)] = string(b)
			}
		}
	}
	return data
}

// MaxPublishedBytes caps what one published ConfigMap holds, under the API
// server's 1 MiB object limit: about 150 keys whose current generation is
// hybrid (its recipient is some 1,960 characters), or thousands of X25519.
const MaxPublishedBytes = 900 << 10

// dataSize is the size of a ConfigMap's data.
func dataSize(data map[string]string) int {
	n := 0
	for k, v := range data {
		n += len(k) + len(v)
	}
	return n
}

// PublishData writes data to the ConfigMap name of configMaps (labelled
// with component), unless it already holds exactly that; data over
// MaxPublishedBytes is refused. Replicas
// publishing the same config write the same bytes, so they do not undo
// each other.
func PublishData(ctx context.Context, configMaps corev1client.ConfigMapInterface, name, component string, data map[string]string) error {
	if n := dataSize(data); n > MaxPublishedBytes {
		return fmt.Errorf("ConfigMap %s: %d bytes to publish, more than the %d a ConfigMap may safely hold; fewer keys, or X25519 instead of hybrid ones", name, n, MaxPublishedBytes)
	}
	for attempt := 0; attempt < maxSyncAttempts; attempt++ {
		cm, err := configMaps.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			cm = &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/name": "sops-webhook", "app.kubernetes.io/component": component}},
				Data:       data,
			}
			_, err = configMaps.Create(ctx, cm, metav1.CreateOptions{})
		case err != nil:
			return fmt.Errorf("read ConfigMap %s: %w", name, err)
		case maps.Equal(cm.Data, data):
			return nil
		default:
			cm.Data = data
			_, err = configMaps.Update(ctx, cm, metav1.UpdateOptions{})
		}
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("write ConfigMap %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("ConfigMap %s: still changing after %d attempts", name, maxSyncAttempts)
}
