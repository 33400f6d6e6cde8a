package decrypt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/getsops/sops/v3/keyservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// valuesPlain is a Helm values file with every type sops writes into tokens.
const valuesPlain = `db:
  user: app
  password: s3cr3t-values-VALUE
  port: 5432
  big: 12345678901234567
  ratio: 0.25
  million: 1e6
  tls: true
  off: false
  created: 2024-01-02T03:04:05Z
  note_unencrypted: public
hosts:
  - s3cr3t-a.example
  - 42
  - name: s3cr3t-list-map
"dotted.key-with-dashes": s3cr3t-dots
multiline: |
  line one s3cr3t
  line two
unicode: "s3cr3t-ünïcødé-🔑"
`

// tokensOf returns the leaves of an encrypted values file that are tokens.
func tokensOf(t *testing.T, enc []byte) []sopskit.ValuesLeaf {
	t.Helper()
	var out []sopskit.ValuesLeaf
	for _, l := range sopskit.ValuesLeaves(t, enc) {
		if s, ok := l.Value.(string); ok && strings.HasPrefix(s, "ENC[") {
			out = append(out, l)
		}
	}
	return out
}

// TestTokensRenderAsHelm decrypts every token of a values file encrypted by
// the sops CLI, with the index the helper renders, and compares it with what
// Helm's template engine prints for the same leaf of the file `sops decrypt`
// returns (text/template prints a value with fmt; Helm reads numbers as
// float64).
func TestTokensRenderAsHelm(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	d := newDecryptor(t, loadAge(t, "team-a", key))
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	enc := sopskit.SopsEncrypt(t, []byte(valuesPlain), "yaml", r, "--unencrypted-suffix", "_unencrypted")
	plain := sopskit.SopsDecrypt(t, enc, "yaml", r)

	idx, err := decrypt.ParseIndex([]byte(sopskit.ValuesIndex(t, enc)))
	require.NoError(t, err)
	encLeaves, plainLeaves := sopskit.ValuesLeaves(t, enc), sopskit.ValuesLeaves(t, plain)
	require.Len(t, encLeaves, len(plainLeaves))

	tokens := d.Tokens(idx, nil)
	decrypted := 0
	for i, leaf := range encLeaves {
		s, ok := leaf.Value.(string)
		if !ok || !strings.HasPrefix(s, "ENC[") {
			continue
		}
		t.Run(fmt.Sprintf("%s%d", leaf.Path, i), func(t *testing.T) {
			require.Equal(t, leaf.Path, plainLeaves[i].Path)
			got, err := tokens.Decrypt(context.Background(), []byte(s))
			require.NoError(t, err)
			assert.Equal(t, fmt.Sprint(plainLeaves[i].Value), string(got))
			decrypted++
		})
	}
	assert.Equal(t, 15, decrypted, "every encrypted leaf was checked")
	assert.Equal(t, []string{"team-a"}, tokens.Keys())

	t.Run("tokens inside a rendered config file", func(t *testing.T) {
		toks := tokensOf(t, enc)
		value := fmt.Sprintf("url: postgres://%s:%s@db:%s/app?tls=%s\n", toks[0].Value, toks[1].Value, toks[0].Value, toks[len(toks)-1].Value)
		got, err := tokens.Decrypt(context.Background(), []byte(value))
		require.NoError(t, err)
		assert.NotContains(t, string(got), "ENC[")
		assert.Contains(t, string(got), "postgres://")
	})
}

// countingSource counts unwrap calls.
type countingSource struct {
	keysource.Source
	calls atomic.Int64
}

func (c *countingSource) Unwrap(ctx context.Context, k *keyservice.Key, ct []byte) ([]byte, error) {
	c.calls.Add(1)
	return c.Source.Unwrap(ctx, k, ct)
}

// Matches forwards to the wrapped source, so denials are explained.
func (c *countingSource) Matches(k *keyservice.Key) bool {
	m, ok := c.Source.(keysource.Matcher)
	return ok && m.Matches(k)
}

func TestTokensUnwrapTheDataKeyOncePerTokens(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	src := &countingSource{Source: loadAge(t, "team-a", key)}
	d := newDecryptor(t, src)
	var plain strings.Builder
	for i := range 50 {
		fmt.Fprintf(&plain, "k%d: s3cr3t-%d\n", i, i)
	}
	enc := sopskit.SopsEncrypt(t, []byte(plain.String()), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
	idx, err := decrypt.ParseIndex([]byte(sopskit.ValuesIndex(t, enc)))
	require.NoError(t, err)

	tokens := d.Tokens(idx, nil)
	var all []string
	for _, l := range tokensOf(t, enc) {
		all = append(all, l.Value.(string))
	}
	require.Len(t, all, 50)
	for _, tok := range all {
		_, err := tokens.Decrypt(context.Background(), []byte(tok))
		require.NoError(t, err)
	}
	assert.EqualValues(t, 1, src.calls.Load(), "one unwrap for 50 tokens")
}

func TestTokensFailures(t *testing.T) {
	held := sopskit.NewAgeKey(t, false)
	other := sopskit.NewAgeKey(t, false)
	d := newDecryptor(t, loadAge(t, "held", held))
	mine := sopskit.Recipients{Age: []sopskit.AgeKey{held}}
	plain := []byte("db:\n  password: s3cr3t-tok-VALUE\n  user: s3cr3t-user\nblob: s3cr3t-blob\n")
	enc := sopskit.SopsEncrypt(t, plain, "yaml", mine)
	index := sopskit.ValuesIndex(t, enc)
	tok := tokensOf(t, enc)[1].Value.(string) // db:password:
	require.Contains(t, index, `"db:password:"`)

	// The same file encrypted again has another data key; so does one for a
	// key the webhook does not hold.
	indexAgain := sopskit.ValuesIndex(t, sopskit.SopsEncrypt(t, plain, "yaml", mine))
	indexOther := sopskit.ValuesIndex(t, sopskit.SopsEncrypt(t, plain, "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{other}}))

	many := strings.Repeat(tok+" ", decrypt.MaxTokens+1)
	tests := []struct {
		name   string
		index  *string // nil: no index at all
		value  string
		reason decrypt.Reason
		detail string
	}{
		{"no index", nil, tok, decrypt.ReasonNoIndex, "without SOPS metadata"},
		{"token missing from the index", ptr(editPath(t, index, "db:password:", "")), tok, decrypt.ReasonNotIndexed, "missing from the values index"},
		{"path edited in the index", ptr(editPath(t, index, "db:password:", "db:user:")), tok, decrypt.ReasonCorrupt, `"db:user:"`},
		{"ciphertext edited", ptr(index), flipData(tok), decrypt.ReasonCorrupt, "edited"},
		{"index from another encryption of the file", ptr(withMetadataOf(t, index, indexAgain)), tok, decrypt.ReasonCorrupt, "one encrypted values file"},
		{"index for a key not held", ptr(withMetadataOf(t, index, indexOther)), tok, decrypt.ReasonNoKey, "whose metadata the index holds: it is encrypted for: age " + strconv.Quote(other.Recipient)},
		{"truncated token", ptr(index), tok[:len(tok)-1], decrypt.ReasonMalformed, "truncated"},
		{"token cut after the marker", ptr(index), "x: ENC[AES256_GCM,data:", decrypt.ReasonMalformed, ""},
		{"short tag", ptr(index), "ENC[AES256_GCM,data:AAAA,iv:" + strings.Repeat("A", 44) + ",tag:AAAA,type:str]", decrypt.ReasonMalformed, ""},
		{"type relabelled bytes", ptr(index), strings.Replace(tok, "type:str]", "type:bytes]", 1), decrypt.ReasonUnsupported, "bytes"},
		{"type relabelled int", ptr(index), strings.Replace(tok, "type:str]", "type:int]", 1), decrypt.ReasonMalformed, "type:int"},
		{"index is not JSON", ptr("{not json"), tok, decrypt.ReasonBadIndex, ""},
		{"index without sops metadata", ptr(`{"paths":{}}`), tok, decrypt.ReasonBadIndex, "encrypted with sops"},
		{"index with unparsable metadata", ptr(`{"sops":{"age":"x"},"paths":{}}`), tok, decrypt.ReasonBadIndex, ""},
		{"index too large", ptr(`{"paths":{"a":"` + strings.Repeat("a", decrypt.MaxIndexSize) + `"},"sops":{}}`), tok, decrypt.ReasonTooLarge, ""},
		{"too many tokens", ptr(index), many, decrypt.ReasonTooLarge, "tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var idx *decrypt.Index
			if tt.index != nil {
				var err error
				idx, err = decrypt.ParseIndex([]byte(*tt.index))
				if err != nil {
					assert.True(t, decrypt.IsReason(err, tt.reason), "got %v", err)
					assert.Contains(t, err.Error(), tt.detail)
					return
				}
			}
			out, err := d.Tokens(idx, nil).Decrypt(context.Background(), []byte(tt.value))
			require.Error(t, err)
			assert.Nil(t, out, "nothing is returned half-decrypted")
			assert.True(t, decrypt.IsReason(err, tt.reason), "got %v", err)
			assert.Contains(t, err.Error(), tt.detail)
			assert.NotContains(t, err.Error(), "s3cr3t")
		})
	}
}

func ptr(s string) *string { return &s }

// editPath changes the path the index gives one token; to "" drops it.
func editPath(t *testing.T, index, from, to string) string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(index), &m))
	paths := m["paths"].(map[string]any)
	for k, v := range paths {
		switch {
		case v == from && to == "":
			delete(paths, k)
		case v == from:
			paths[k] = to
		}
	}
	out, err := json.Marshal(m)
	require.NoError(t, err)
	return string(out)
}

// withMetadataOf returns index with the sops metadata of other: its data key
// is another one.
func withMetadataOf(t *testing.T, index, other string) string {
	t.Helper()
	var a, b map[string]any
	require.NoError(t, json.Unmarshal([]byte(index), &a))
	require.NoError(t, json.Unmarshal([]byte(other), &b))
	a["sops"] = b["sops"]
	out, err := json.Marshal(a)
	require.NoError(t, err)
	return string(out)
}

// flipData changes the first character of a token's ciphertext.
func flipData(tok string) string {
	i := strings.Index(tok, "data:") + len("data:")
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}

func TestEntries(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	d := newDecryptor(t, loadAge(t, "k", key))
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	tests := []struct {
		name, format, file, plain string
		want                      []string // key=value; nil: not flat
	}{
		{"dotenv", "dotenv", "app.env", "A=1\n# comment\nB=two words\nC=\n",
			[]string{"A=1", "B=two words", "C="}},
		{"yaml scalars", "yaml", "app.yaml", "user: app\nport: 5432\nratio: 0.5\ntls: true\nnone: null\nml: |\n  a\n  b\n",
			[]string{"user=app", "port=5432", "ratio=0.5", "tls=true", "none=", "ml=a\nb\n"}},
		{"json scalars", "json", "app.json", `{"user":"app","port":5432}`,
			[]string{"user=app", "port=5432"}},
		{"ini without sections", "ini", "app.ini", "user = app\nport = 5432\n",
			[]string{"user=app", "port=5432"}},
		{"yaml nested map", "yaml", "app.yaml", "db:\n  user: app\n", nil},
		{"yaml list", "yaml", "app.yaml", "hosts: [a, b]\n", nil},
		{"ini with sections", "ini", "app.ini", "[db]\nuser = app\n", nil},
		{"binary", "binary", "blob", "raw", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := sopskit.SopsEncrypt(t, []byte(tt.plain), tt.format, r)
			res, err := d.Document(context.Background(), enc, decrypt.Detect(enc, tt.file), nil)
			require.NoError(t, err)
			got, err := res.Entries()
			if tt.want == nil {
				assert.True(t, decrypt.IsReason(err, decrypt.ReasonUnsupported), "got %v", err)
				return
			}
			require.NoError(t, err)
			var kv []string
			for _, e := range got {
				kv = append(kv, e.Key+"="+string(e.Value))
			}
			assert.Equal(t, tt.want, kv)
		})
	}
}

// denyAll refuses every key.
type denyAll struct{}

func (denyAll) Allowed(_ context.Context, name string) error {
	return fmt.Errorf("key %q is not granted here: %w", name, keysource.ErrNotGranted)
}

// onlyKey allows the one key named.
type onlyKey string

func (k onlyKey) Allowed(_ context.Context, name string) error {
	if name != string(k) {
		return fmt.Errorf("key %q is not granted here: %w", name, keysource.ErrNotGranted)
	}
	return nil
}

// A generated key is granted by its name; the cache reports the generation
// that opened a document and returns it to a request granted the key.
func TestResultCacheServesGeneratedKeys(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	var unwraps atomic.Int64
	ring, err := keysource.NewRingWith([]keysource.Source{keysource.NewAgeGenerations("cluster", []keysource.AgeGeneration{{Number: 7, Identity: id}})},
		[]keysource.RingOption{keysource.WithStats(keysource.Stats{Unwrap: func(string, bool) { unwraps.Add(1) }})})
	require.NoError(t, err)
	d := decrypt.New(ring, decrypt.WithResultCache(time.Hour, 1<<20))
	doc := sopskit.SopsEncrypt(t, []byte("K=s3cr3t-generated\n"), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: id.Recipient().String()}}})
	for range 3 {
		res, err := d.Document(context.Background(), doc, decrypt.FormatDotenv, onlyKey("cluster"))
		require.NoError(t, err)
		assert.Equal(t, []string{"cluster@7"}, res.Keys)
	}
	assert.EqualValues(t, 1, unwraps.Load(), "decrypted once, then from the cache")
	_, err = d.Document(context.Background(), doc, decrypt.FormatDotenv, onlyKey("other"))
	assert.True(t, decrypt.IsReason(err, decrypt.ReasonNotGranted), "got %v", err)
}

func TestResultCacheAppliesTheAccessEveryTime(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	src := &countingSource{Source: loadAge(t, "team-a", key)}
	ring, err := keysource.NewRing(src)
	require.NoError(t, err)
	d := decrypt.New(ring, decrypt.WithResultCache(time.Hour, 1<<20))
	doc := sopskit.SopsEncrypt(t, []byte("K=s3cr3t-cached\n"), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{key}})

	for range 3 {
		res, err := d.Document(context.Background(), doc, decrypt.FormatDotenv, nil)
		require.NoError(t, err)
		assert.Equal(t, "K=s3cr3t-cached\n", string(res.Plaintext))
		assert.Equal(t, []string{"team-a"}, res.Keys)
	}
	assert.EqualValues(t, 1, src.calls.Load(), "decrypted once, then from the cache")

	_, err = d.Document(context.Background(), doc, decrypt.FormatDotenv, denyAll{})
	require.Error(t, err, "a cached document is not returned when its key is denied")
	assert.True(t, decrypt.IsReason(err, decrypt.ReasonNotGranted), "got %v", err)

	// Values payloads: the index is parsed once, the tokens decrypted once.
	values := sopskit.SopsEncrypt(t, []byte("db:\n  password: s3cr3t-token\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
	token := []byte(sopskit.ValuesLeaves(t, values)[0].Value.(string))
	before := src.calls.Load()
	for range 3 {
		idx, err := d.Index([]byte(sopskit.ValuesIndex(t, values)))
		require.NoError(t, err)
		tokens := d.Tokens(idx, nil)
		out, err := tokens.Decrypt(context.Background(), token)
		require.NoError(t, err)
		assert.Equal(t, "s3cr3t-token", string(out))
		assert.Equal(t, []string{"team-a"}, tokens.Keys(), "the keys are reported from the cache too")
	}
	assert.EqualValues(t, before+1, src.calls.Load())
	idx, err := d.Index([]byte(sopskit.ValuesIndex(t, values)))
	require.NoError(t, err)
	_, err = d.Tokens(idx, denyAll{}).Decrypt(context.Background(), token)
	assert.True(t, decrypt.IsReason(err, decrypt.ReasonNotGranted), "a cached value is not returned when its key is denied: %v", err)

	other := bytes.Replace(doc, []byte("K=ENC"), []byte("K=ENC"), 1)
	other = append([]byte("#\n"), other...) // another input: another cache entry
	_, err = d.Document(context.Background(), other, decrypt.FormatDotenv, nil)
	require.NoError(t, err)
	assert.EqualValues(t, before+2, src.calls.Load())
}
