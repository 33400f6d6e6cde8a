package clusterkeys

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func newStore() (*Store, *fake.Clientset) {
	kube := fake.NewClientset()
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	return &Store{Secrets: kube.CoreV1().Secrets("sops-webhook"), Name: DefaultSecretName, Now: func() time.Time { return now }}, kube
}

func TestSyncGeneratesOnceAndKeeps(t *testing.T) {
	ctx := context.Background()
	s, kube := newStore()
	specs := []Spec{{Name: "cluster"}, {Name: "pq", Type: Hybrid}}

	first, err := s.Sync(ctx, specs)
	require.NoError(t, err)
	require.Len(t, first.Keys, 2)
	for i, want := range []struct {
		typ    Type
		prefix string
	}{{X25519, "age1"}, {Hybrid, "age1pq1"}} {
		k := first.Keys[i]
		require.Len(t, k.Generations, 1, k.Name)
		g := k.Generations[0]
		assert.Equal(t, want.typ, g.Type)
		assert.Equal(t, StateCurrent, g.State)
		assert.Equal(t, 1, g.Number)
		assert.True(t, strings.HasPrefix(g.Recipient, want.prefix), g.Recipient)
		require.NotNil(t, k.Identity(1))
	}

	// A second Sync, as another replica or the next check, reads the same
	// identities and writes nothing.
	actions := len(kube.Actions())
	again, err := s.Sync(ctx, specs)
	require.NoError(t, err)
	assert.Equal(t, first.Version, again.Version)
	assert.Equal(t, first.Keys[0].Generations, again.Keys[0].Generations)
	assert.Len(t, kube.Actions(), actions+1, "only a get")

	// A key no longer configured stays in the Secret, untouched.
	only, err := s.Sync(ctx, specs[:1])
	require.NoError(t, err)
	assert.NotNil(t, only.Key("pq"))

	// The Secret holds each identity once, and its index no private key.
	secret, err := s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Len(t, secret.Data, 3)
	assert.NotContains(t, string(secret.Data[indexEntry]), "AGE-SECRET-KEY")
}

func TestSyncAddsAGenerationWhenAllAreRetired(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	_, err := s.Sync(ctx, []Spec{{Name: "cluster"}})
	require.NoError(t, err)
	secret, err := s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
	require.NoError(t, err)
	secret.Data[indexEntry] = []byte(strings.Replace(string(secret.Data[indexEntry]), `"current"`, `"retired"`, 1))
	_, err = s.Secrets.Update(ctx, secret, metav1.UpdateOptions{})
	require.NoError(t, err)

	keys, err := s.Sync(ctx, []Spec{{Name: "cluster"}})
	require.NoError(t, err)
	gens := keys.Key("cluster").Generations
	require.Len(t, gens, 2)
	assert.Equal(t, []State{StateCurrent, StateRetired}, []State{gens[0].State, gens[1].State})
	assert.Equal(t, []int{2, 1}, []int{gens[0].Number, gens[1].Number})
	assert.NotEqual(t, gens[0].Recipient, gens[1].Recipient)
}

func TestSyncRotatesOnSchedule(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.Now = func() time.Time { return now }
	specs := []Spec{{Name: "cluster", RotateEvery: DefaultRotateEvery}, {Name: "fixed"}}
	states := func(k *Key) []State {
		var out []State
		for _, g := range k.Generations {
			out = append(out, g.State)
		}
		return out
	}

	keys, err := s.Sync(ctx, specs)
	require.NoError(t, err)
	now = now.Add(DefaultRotateEvery - time.Second)
	keys, err = s.Sync(ctx, specs)
	require.NoError(t, err)
	assert.Len(t, keys.Key("cluster").Generations, 1, "not due yet")

	now = now.Add(time.Second)
	keys, err = s.Sync(ctx, specs)
	require.NoError(t, err)
	assert.Equal(t, []State{StateCurrent, StateActive}, states(keys.Key("cluster")), "rotated; the old one still decrypts")
	assert.Equal(t, now, keys.Key("cluster").Generations[0].Created)
	assert.Len(t, keys.Key("fixed").Generations, 1, "a key without a period is never rotated")

	now = now.Add(2 * DefaultRotateEvery)
	keys, err = s.Sync(ctx, specs)
	require.NoError(t, err)
	assert.Equal(t, []State{StateCurrent, StateActive, StateActive}, states(keys.Key("cluster")), "one generation per check, however late")
}

// The operator's requests are carried out once, in the write that removes
// them.
func TestSyncCarriesOutRequests(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	specs := []Spec{{Name: "cluster"}, {Name: "other"}}
	_, err := s.Sync(ctx, specs)
	require.NoError(t, err)
	request := func(annotations map[string]string) *Keys {
		t.Helper()
		secret, err := s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
		require.NoError(t, err)
		secret.Annotations = annotations
		_, err = s.Secrets.Update(ctx, secret, metav1.UpdateOptions{})
		require.NoError(t, err)
		keys, err := s.Sync(ctx, specs)
		require.NoError(t, err)
		secret, err = s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Empty(t, secret.Annotations, "the requests are removed")
		return keys
	}
	states := func(k *Key) string {
		var out []string
		for _, g := range k.Generations {
			out = append(out, strconv.Itoa(g.Number)+" "+string(g.State))
		}
		return strings.Join(out, ", ")
	}

	keys := request(map[string]string{AnnotationRotate: "cluster, unknown"})
	assert.Equal(t, "2 current, 1 active", states(keys.Key("cluster")))
	assert.Equal(t, "1 current", states(keys.Key("other")))

	keys = request(map[string]string{AnnotationRetire: "cluster@1,other@9,bad"})
	assert.Equal(t, "2 current, 1 retired", states(keys.Key("cluster")))

	keys = request(map[string]string{AnnotationRetire: "cluster@2"})
	assert.Equal(t, "3 current, 2 retired, 1 retired", states(keys.Key("cluster")), "retiring the current one makes a new one")

	again, err := s.Sync(ctx, specs)
	require.NoError(t, err)
	assert.Equal(t, keys.Version, again.Version, "done once")
}

// Each generation that decrypts is wrapped for the break-glass recipients
// in the write that makes it current; a backup opens with a break-glass
// identity alone and holds the generation's identity.
func TestBackups(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	offline, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	_, err = s.Sync(ctx, []Spec{{Name: "early"}})
	require.NoError(t, err)

	specs := []Spec{{Name: "early", BreakGlass: []string{offline.Recipient().String()}}, {Name: "late", Type: Hybrid, BreakGlass: []string{offline.Recipient().String()}}, {Name: "none"}}
	keys, err := s.Sync(ctx, specs)
	require.NoError(t, err)
	for _, name := range []string{"early", "late"} {
		k := keys.Key(name)
		backup := k.Backup(1)
		require.NotNil(t, backup, "%s: backed up, generated before break-glass was configured or not", name)
		assert.NotContains(t, string(backup), "AGE-SECRET-KEY")
		r, err := age.Decrypt(armor.NewReader(bytes.NewReader(backup)), offline)
		require.NoError(t, err)
		plain, err := io.ReadAll(r)
		require.NoError(t, err)
		id, recipient, err := parseIdentity(string(plain))
		require.NoError(t, err)
		assert.NotNil(t, id)
		assert.Equal(t, k.Generations[0].Recipient, recipient, "%s: the backup holds the generation's identity", name)
	}
	assert.Nil(t, keys.Key("none").Backup(1), "no break-glass recipient, no backup")
	data := BackupsData(keys)
	assert.Len(t, data, 2)
	assert.Contains(t, data, "late.1.agekey.age")

	// Read back, the backups are what was written.
	again, err := s.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, keys.Key("late").Backup(1), again.Key("late").Backup(1))
	_, err = s.Sync(ctx, []Spec{{Name: "bad", BreakGlass: []string{"age1notarecipient"}}})
	require.ErrorContains(t, err, `"age1notarecipient" is not an age X25519 or hybrid recipient`)
}

// TestSealedBackups: a spec with a Seal (break-glass KMS keys) seals each
// generation's identity in the write that makes it current, once; what
// cannot be sealed is not written, so no generation exists without its
// sealed backup.
func TestSealedBackups(t *testing.T) {
	ctx := context.Background()
	s, kube := newStore()
	var sealed []string
	seal := func(_ context.Context, identity string) ([]byte, error) {
		sealed = append(sealed, identity)
		return []byte("sealed:" + strconv.Itoa(len(identity))), nil
	}
	keys, err := s.Sync(ctx, []Spec{{Name: "cluster", Seal: seal}})
	require.NoError(t, err)
	require.Len(t, sealed, 1)
	id, recipient, err := parseIdentity(sealed[0])
	require.NoError(t, err)
	assert.NotNil(t, id)
	k := keys.Key("cluster")
	assert.Equal(t, k.Generations[0].Recipient, recipient, "the generation's identity is sealed")
	assert.Equal(t, "sealed:74", string(k.SealedBackup(1)))
	assert.Equal(t, map[string]string{"cluster.1.agekey.sops.yaml": "sealed:74"}, BackupsData(keys))
	again, err := s.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, k.SealedBackup(1), again.Key("cluster").SealedBackup(1))
	_, err = s.Sync(ctx, []Spec{{Name: "cluster", Seal: seal}})
	require.NoError(t, err)
	assert.Len(t, sealed, 1, "sealed once")

	failing := func(context.Context, string) ([]byte, error) { return nil, errors.New("aws kms encrypt: timeout") }
	before, err := kube.CoreV1().Secrets("sops-webhook").Get(ctx, DefaultSecretName, metav1.GetOptions{})
	require.NoError(t, err)
	_, err = s.Sync(ctx, []Spec{{Name: "cluster", Seal: seal}, {Name: "fresh", Seal: failing}})
	require.ErrorContains(t, err, `key "fresh" generation 1: sealed backup: aws kms encrypt: timeout`)
	after, err := kube.CoreV1().Secrets("sops-webhook").Get(ctx, DefaultSecretName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, before.Data, after.Data, "nothing written")
	assert.NotContains(t, after.Data, "fresh.1.agekey")
}

func TestDecodeRefusesWhatDoesNotMatch(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	_, err := s.Sync(ctx, []Spec{{Name: "cluster"}, {Name: "other"}})
	require.NoError(t, err)
	secret, err := s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
	require.NoError(t, err)
	identity := string(secret.Data[entryName("cluster", 1)])

	tests := []struct {
		name    string
		edit    func(data map[string][]byte)
		wantErr string
	}{
		{"identity swapped for another key's", func(d map[string][]byte) { d[entryName("cluster", 1)] = d[entryName("other", 1)] },
			`key "cluster" generation 1: the stored identity does not match the recorded recipient`},
		{"identity missing", func(d map[string][]byte) { delete(d, entryName("cluster", 1)) }, `key "cluster" generation 1: no identity stored`},
		{"identity malformed", func(d map[string][]byte) { d[entryName("cluster", 1)] = []byte(identity[:30]) }, `key "cluster" generation 1: malformed X25519 identity`},
		{"index not JSON", func(d map[string][]byte) { d[indexEntry] = []byte("{") }, "generations.json: "},
		{"bad key name", func(d map[string][]byte) {
			d[indexEntry] = []byte(strings.Replace(string(d[indexEntry]), `"cluster"`, `"Bad Name"`, 1))
		}, `key name "Bad Name" is invalid`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := map[string][]byte{}
			for k, v := range secret.Data {
				data[k] = append([]byte(nil), v...)
			}
			tt.edit(data)
			_, err := decode(data)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.NotContains(t, err.Error(), "AGE-SECRET-KEY")
		})
	}
}

func TestCreationRules(t *testing.T) {
	gen := func(n int, state State, r string) Generation {
		return Generation{Number: n, Type: X25519, Recipient: r, Created: time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC), State: state}
	}
	r := Recipients{Keys: []PublishedKey{
		{Name: "cluster", Source: "generated", Generations: []Generation{gen(2, StateCurrent, "age1new"), gen(1, StateActive, "age1old")},
			Grants: []Grant{{Namespaces: []string{"team-a", "team-b-*"}, Kinds: []string{"Secret"}}, {Namespaces: []string{"*"}, Kinds: []string{"Secret"}, RequireRBAC: true}}},
		{Name: "legacy", Source: "pgp", PGP: []string{"ABCDEF"}, Grants: []Grant{{Namespaces: []string{"team-a"}, Kinds: []string{"Secret", "ConfigMap"}}}},
		{Name: "selected", Source: "age", Age: []string{"age1sel"}, Grants: []Grant{{NamespaceSelector: "team=c", Kinds: []string{"Secret"}}}},
		{Name: "ungranted", Source: "age", Age: []string{"age1none"}, Grants: []Grant{}},
	}}
	data, err := r.Data()
	require.NoError(t, err)
	for _, entry := range []string{RecipientsEntry, SopsConfigEntry} {
		golden := filepath.Join("testdata", entry)
		if *update {
			require.NoError(t, os.WriteFile(golden, []byte(data[entry]), 0o644))
		}
		want, err := os.ReadFile(golden)
		require.NoError(t, err)
		assert.Equal(t, string(want), data[entry], "%s (go test -update rewrites it)", golden)
	}
	// The retired and active generations are published, never encrypted for.
	assert.NotContains(t, data[SopsConfigEntry], "age1old")
	assert.Contains(t, data[RecipientsEntry], "age1old")
}

func TestNamespacePathRegex(t *testing.T) {
	tests := []struct {
		pattern string
		match   []string
		noMatch []string
	}{
		{"team-a", []string{"team-a/values.enc.yaml", "clusters/prod/team-a/x.yaml"}, []string{"team-ab/x.yaml", "xteam-a/x.yaml", "team-a.yaml"}},
		{"team-b-*", []string{"team-b-dev/x.yaml", "team-b-/x.yaml"}, []string{"team-b/x.yaml", "team-bx-dev/x.yaml"}},
		{"a.b", []string{"a.b/x"}, []string{"axb/x"}},
	}
	for _, tt := range tests {
		t.Run(tt.pattern, func(t *testing.T) {
			re := regexp.MustCompile(NamespacePathRegex(tt.pattern))
			for _, p := range tt.match {
				assert.True(t, re.MatchString(p), p)
			}
			for _, p := range tt.noMatch {
				assert.False(t, re.MatchString(p), p)
			}
		})
	}
}

// BenchmarkGenerate is the time to generate one identity of each type, as
// a new generation does before it is written.
func BenchmarkGenerate(b *testing.B) {
	for _, typ := range []Type{X25519, Hybrid} {
		b.Run(string(typ), func(b *testing.B) {
			for b.Loop() {
				if _, _, _, err := generate(typ); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRecipientsConfigMap reports the size of the recipients
// ConfigMap's data for 100 generated keys (two generations each, one
// grant of two namespace patterns each) and the time to render it: with
// X25519 generations, and with a hybrid current generation, whose
// recipient is about 1,960 characters against 62.
func BenchmarkRecipientsConfigMap(b *testing.B) {
	created := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	for _, current := range []Type{X25519, Hybrid} {
		var r Recipients
		for i := range 100 {
			var gens []Generation
			for n, typ := range []Type{current, X25519} {
				_, recipient, _, err := generate(typ)
				if err != nil {
					b.Fatal(err)
				}
				state := StateActive
				if n == 0 {
					state = StateCurrent
				}
				gens = append(gens, Generation{Number: 2 - n, Type: typ, Recipient: recipient, Created: created, State: state})
			}
			r.Keys = append(r.Keys, PublishedKey{Name: fmt.Sprintf("key-%03d", i), Source: "generated", Generations: gens,
				Grants: []Grant{{Namespaces: []string{fmt.Sprintf("team-%03d", i), fmt.Sprintf("team-%03d-*", i)}, Kinds: []string{"Secret"}}}})
		}
		b.Run("current-"+string(current), func(b *testing.B) {
			var size int
			for b.Loop() {
				data, err := r.Data()
				if err != nil {
					b.Fatal(err)
				}
				size = dataSize(data)
			}
			b.ReportMetric(float64(size), "bytes")
		})
	}
}

func TestPublishRefusesWhatAConfigMapCannotHold(t *testing.T) {
	kube := fake.NewClientset()
	cms := kube.CoreV1().ConfigMaps("sops-webhook")
	err := PublishData(context.Background(), cms, "r", "recipients", map[string]string{"big": strings.Repeat("a", MaxPublishedBytes)})
	require.ErrorContains(t, err, "more than the 921600 a ConfigMap may safely hold")
	require.NoError(t, PublishData(context.Background(), cms, "r", "recipients", map[string]string{"small": "a"}))
	cm, err := cms.Get(context.Background(), "r", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "recipients", cm.Labels["app.kubernetes.io/component"])
}
