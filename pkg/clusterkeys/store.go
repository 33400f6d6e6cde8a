package clusterkeys

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// DefaultSecretName is the Secret, in the webhook's namespace, that holds
// the generated keys.
const DefaultSecretName = "sops-webhook-generated-keys"

// maxSyncAttempts bounds how often Sync re-reads the Secret after losing a
// write to another replica; each loss means another replica made progress.
const maxSyncAttempts = 8

// Store reads and writes the generated keys' Secret.
type Store struct {
	// Secrets are the Secrets of the webhook's namespace.
	Secrets corev1client.SecretInterface
	// Name is the Secret's name (DefaultSecretName).
	Name string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Keys are the generated keys as read from the Secret at one version.
type Keys struct {
	// Version is the Secret's resourceVersion: it changes with any write.
	Version string
	// Keys are every key the Secret holds, configured or not.
	Keys []*Key
}

// Key returns the key named name, or nil.
func (k *Keys) Key(name string) *Key {
	for _, key := range k.Keys {
		if key.Name == name {
			return key
		}
	}
	return nil
}

// Read returns the generated keys as the Secret holds them, writing
// nothing; no Secret is no keys.
func (s *Store) Read(ctx context.Context) (*Keys, error) {
	secret, err := s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &Keys{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read Secret %s: %w", s.Name, err)
	}
	keys, err := decode(secret.Data)
	if err != nil {
		return nil, fmt.Errorf("Secret %s: %w", s.Name, err)
	}
	return &Keys{Version: secret.ResourceVersion, Keys: keys}, nil
}

// Sync returns the generated keys after making sure each spec has a
// current generation: a spec with no key, whose generations are all
// retired, or whose current generation is due for rotation, gets a new
// generation, written to the Secret before it is returned. Replicas syncing at once agree on one identity: the Secret is
// created only if absent and updated only at the version read, and a
// replica that loses re-reads and uses what won. Keys in the Secret that
// no spec names are kept as they are. Errors name the Secret and the key,
// never key material.
func (s *Store) Sync(ctx context.Context, specs []Spec) (*Keys, error) {
	for attempt := 0; attempt < maxSyncAttempts; attempt++ {
		secret, err := s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
		exists := err == nil
		if apierrors.IsNotFound(err) {
			secret = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: s.Name, Labels: map[string]string{"app.kubernetes.io/name": "sops-webhook", "app.kubernetes.io/component": "generated-keys"}},
				Type:       corev1.SecretTypeOpaque,
			}
		} else if err != nil {
			return nil, fmt.Errorf("read Secret %s: %w", s.Name, err)
		}
		keys, err := decode(secret.Data)
		if err != nil {
			return nil, fmt.Errorf("Secret %s: %w", s.Name, err)
		}
		changed, err := s.ensure(ctx, secret, &keys, specs)
		if err != nil {
			return nil, fmt.Errorf("Secret %s: %w", s.Name, err)
		}
		if !changed {
			return &Keys{Version: secret.ResourceVersion, Keys: keys}, nil
		}
		var written *corev1.Secret
		if exists {
			written, err = s.Secrets.Update(ctx, secret, metav1.UpdateOptions{})
		} else {
			written, err = s.Secrets.Create(ctx, secret, metav1.CreateOptions{})
		}
		switch {
		case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err):
			continue // another replica wrote first: use what it wrote
		case err != nil:
			return nil, fmt.Errorf("write Secret %s: %w", s.Name, err)
		}
		return &Keys{Version: written.ResourceVersion, Keys: keys}, nil
	}
	return nil, fmt.Errorf("Secret %s: still changing after %d attempts", s.Name, maxSyncAttempts)
}

// The operator's requests, as annotations on the Secret (the plugin's
// rotate and retire write them with a metadata patch, never reading the
// identities). The webhook carries them out and removes them in the same
// write, so each is done once.
const (
	// AnnotationRotate lists keys, comma separated, to give a new current
	// generation now.
	AnnotationRotate = "sops-webhook.io/rotate"
	// AnnotationRetire lists generations, "key@number" comma separated, to
	// retire: they no longer decrypt. Retiring the current generation
	// makes a new one current.
	AnnotationRetire = "sops-webhook.io/retire"
)

// ensure carries out the requests on secret, then adds a generation to
// each spec's key that has none current, is due for rotation or was asked
// to rotate, in secret's data and in keys; it reports whether it changed
// anything.
func (s *Store) ensure(ctx context.Context, secret *corev1.Secret, keys *[]*Key, specs []Spec) (bool, error) {
	changed, rotate := s.requests(secret, *keys)
	for _, spec := range specs {
		var key *Key
		for _, k := range *keys {
			if k.Name == spec.Name {
				key = k
			}
		}
		if key != nil && !s.due(key, spec) && !rotate[spec.Name] {
			continue
		}
		if storedGenerations(*keys) >= MaxStoredGenerations {
			if key != nil && key.Current() != nil {
				continue // due for rotation, but the Secret is full
			}
			return false, fmt.Errorf("key %q: the Secret already holds %d generations", spec.Name, MaxStoredGenerations)
		}
		if key == nil {
			if len(*keys) >= MaxKeys {
				return false, fmt.Errorf("key %q: the Secret already holds %d keys", spec.Name, MaxKeys)
			}
			key = &Key{Name: spec.Name}
			*keys = append(*keys, key)
		}
		if err := s.addGeneration(secret, key, spec.Type); err != nil {
			return false, fmt.Errorf("key %q: %w", spec.Name, err)
		}
		changed = true
	}
	// Every generation that decrypts has its backups, if the spec asks for
	// them: the new one before it is written current, older ones once
	// break-glass recipients or keys are configured.
	for _, spec := range specs {
		if len(spec.BreakGlass) == 0 && spec.Seal == nil {
			continue
		}
		for _, k := range *keys {
			if k.Name != spec.Name {
				continue
			}
			for _, g := range k.Generations {
				needBackup := len(spec.BreakGlass) > 0 && k.Backup(g.Number) == nil
				needSealed := spec.Seal != nil && k.SealedBackup(g.Number) == nil
				if g.State == StateRetired || (!needBackup && !needSealed) {
					continue
				}
				text := identityText(k.Identity(g.Number))
				if needBackup {
					backup, err := wrapBackup(text, spec.BreakGlass)
					if err != nil {
						return false, fmt.Errorf("key %q: %w", spec.Name, err)
					}
					k.backups = setBackup(k.backups, g.Number, backup)
					secret.Data = setEntry(secret.Data, BackupName(k.Name, g.Number), backup)
					changed = true
				}
				if needSealed {
					sealed, err := spec.Seal(ctx, text)
					if err != nil {
						return false, fmt.Errorf("key %q generation %d: sealed backup: %w", spec.Name, g.Number, err)
					}
					if len(sealed) > MaxBackupSize {
						return false, fmt.Errorf("key %q generation %d: sealed backup larger than %d bytes", spec.Name, g.Number, MaxBackupSize)
					}
					k.sealed = setBackup(k.sealed, g.Number, sealed)
					secret.Data = setEntry(secret.Data, SealedBackupName(k.Name, g.Number), sealed)
					changed = true
				}
			}
		}
	}
	if !changed {
		return false, nil
	}
	if secret.Data == nil {
		secret.Data = map[string][]byte{}
	}
	raw, err := encodeIndex(*keys)
	if err != nil {
		return false, err
	}
	secret.Data[indexEntry] = raw
	return true, nil
}

// setEntry returns data, made if nil, with entry name set to b.
func setEntry(data map[string][]byte, name string, b []byte) map[string][]byte {
	if data == nil {
		data = map[string][]byte{}
	}
	data[name] = b
	return data
}

// requests applies the retire requests of secret to keys, returns the
// keys asked to rotate, and removes both annotations; it reports whether
// there were any. Entries that name nothing are dropped.
func (s *Store) requests(secret *corev1.Secret, keys []*Key) (bool, map[string]bool) {
	rotate := map[string]bool{}
	retire, hasRetire := secret.Annotations[AnnotationRetire]
	rot, hasRotate := secret.Annotations[AnnotationRotate]
	if !hasRetire && !hasRotate {
		return false, rotate
	}
	for _, name := range splitList(rot) {
		rotate[name] = true
	}
	for _, entry := range splitList(retire) {
		name, num, _ := strings.Cut(entry, "@")
		n, err := strconv.Atoi(num)
		if err != nil {
			continue
		}
		for _, k := range keys {
			for i := range k.Generations {
				if k.Name == name && k.Generations[i].Number == n {
					k.Generations[i].State = StateRetired
				}
			}
		}
	}
	delete(secret.Annotations, AnnotationRetire)
	delete(secret.Annotations, AnnotationRotate)
	return true, rotate
}

// splitList splits a comma-separated annotation value.
func splitList(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// due reports whether key needs a new generation: it has no current one,
// or spec rotates it and the current one is RotateEvery old. A key that
// has MaxGenerations is rotated no more.
func (s *Store) due(key *Key, spec Spec) bool {
	cur := key.Current()
	if cur == nil {
		return true
	}
	return spec.RotateEvery > 0 && len(key.Generations) < MaxGenerations && !s.now().Before(cur.Created.Add(spec.RotateEvery))
}

// identityText is the text form of an identity generate made.
func identityText(id age.Identity) string {
	if s, ok := id.(fmt.Stringer); ok {
		return s.String()
	}
	return ""
}

// now is the Store's clock.
func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// addGeneration generates a new current generation of key, stores its
// identity in secret's data, and makes the previous current one active.
func (s *Store) addGeneration(secret *corev1.Secret, key *Key, t Type) error {
	if len(key.Generations) >= MaxGenerations {
		return fmt.Errorf("already %d generations", MaxGenerations)
	}
	id, recipient, text, err := generate(t)
	if err != nil {
		return err
	}
	if t == "" {
		t = X25519
	}
	n := 1
	if len(key.Generations) > 0 {
		n = key.Generations[0].Number + 1
	}
	for i := range key.Generations {
		if key.Generations[i].State == StateCurrent {
			key.Generations[i].State = StateActive
		}
	}
	key.Generations = append([]Generation{{Number: n, Type: t, Recipient: recipient, Created: s.now().UTC().Truncate(time.Second), State: StateCurrent}}, key.Generations...)
	if key.identities == nil {
		key.identities = map[int]age.Identity{}
	}
	key.identities[n] = id
	if secret.Data == nil {
		secret.Data = map[string][]byte{}
	}
	secret.Data[entryName(key.Name, n)] = []byte(text + "\n")
	return nil
}
