package decrypt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// samples are plaintext files in each format, each holding a secret marker
// string the tests look for in errors.
var samples = map[string]struct {
	file  string
	plain []byte
}{
	"yaml":   {"app.yaml", []byte("# database settings\ndb:\n    user: app\n    password: s3cr3t-yaml-VALUE\n    port: 5432\n    tls: true\nhosts:\n    - a.example\n    - b.example\nmultiline: |\n    line one\n    line two\n")},
	"json":   {"app.json", []byte(`{"db":{"user":"app","password":"s3cr3t-json-VALUE","port":5432,"ratio":0.5,"tls":true,"none":null},"hosts":["a","b"]}`)},
	"dotenv": {"app.env", []byte("DB_USER=app\nDB_PASSWORD=s3cr3t-dotenv-VALUE\nEMPTY=\n")},
	"ini":    {"app.ini", []byte("[db]\nuser = app\npassword = s3cr3t-ini-VALUE\n\n[cache]\nttl = 60\n")},
	"binary": {"tls.key", append([]byte("s3cr3t-binary-VALUE\x00\xff\xfe raw bytes \x01"), bytes.Repeat([]byte{0x80, 0x0a}, 64)...)},
}

func newDecryptor(t testing.TB, sources ...keysource.Source) *decrypt.Decryptor {
	t.Helper()
	ring, err := keysource.NewRing(sources...)
	require.NoError(t, err)
	return decrypt.New(ring)
}

func loadAge(t *testing.T, name string, k sopskit.AgeKey) keysource.Source {
	t.Helper()
	s, err := keysource.LoadAge(name, k.IdentityFile)
	require.NoError(t, err)
	return s
}

func loadPGP(t *testing.T, name string, k sopskit.PGPKey) keysource.Source {
	t.Helper()
	s, err := keysource.LoadPGP(name, k.PrivateKeyFile)
	require.NoError(t, err)
	return s
}

func TestDocumentMatchesSopsCLI(t *testing.T) {
	ageKey := sopskit.NewAgeKey(t, false)
	pqKey := sopskit.NewAgeKey(t, true)
	pgpKey := sopskit.NewPGPKey(t)
	d := newDecryptor(t, loadAge(t, "team-a", ageKey), loadAge(t, "team-pq", pqKey), loadPGP(t, "legacy", pgpKey))

	keyKinds := []struct {
		name     string
		r        sopskit.Recipients
		wantKeys []string
	}{
		{"age", sopskit.Recipients{Age: []sopskit.AgeKey{ageKey}}, []string{"team-a"}},
		{"age-pq-hybrid", sopskit.Recipients{Age: []sopskit.AgeKey{pqKey}}, []string{"team-pq"}},
		{"pgp", sopskit.Recipients{PGP: []sopskit.PGPKey{pgpKey}}, []string{"legacy"}},
	}
	formats := []struct {
		format string
		want   decrypt.Format
	}{
		{"yaml", decrypt.FormatYAML},
		{"json", decrypt.FormatJSON},
		{"dotenv", decrypt.FormatDotenv},
		{"ini", decrypt.FormatINI},
		{"binary", decrypt.FormatBinary},
	}
	for _, kk := range keyKinds {
		for _, f := range formats {
			t.Run(kk.name+"/"+f.format, func(t *testing.T) {
				s := samples[f.format]
				enc := sopskit.SopsEncrypt(t, s.plain, f.format, kk.r)
				want := sopskit.SopsDecrypt(t, enc, f.format, kk.r)

				got := decrypt.Detect(enc, s.file)
				require.Equal(t, f.want, got)
				res, err := d.Document(context.Background(), enc, got, nil)
				require.NoError(t, err)
				assert.Equal(t, string(want), string(res.Plaintext), "output differs from `sops decrypt`")
				assert.Equal(t, kk.wantKeys, res.Keys)
				assert.Equal(t, f.want, res.Format)
			})
		}
	}
}

func TestDocumentCompactJSON(t *testing.T) {
	k := sopskit.NewAgeKey(t, false)
	r := sopskit.Recipients{Age: []sopskit.AgeKey{k}}
	d := newDecryptor(t, loadAge(t, "k", k))
	enc := sopskit.SopsEncrypt(t, samples["json"].plain, "json", r)
	var compact bytes.Buffer
	require.NoError(t, json.Compact(&compact, enc))
	require.NotContains(t, compact.String(), "\n")

	f := decrypt.Detect(compact.Bytes(), "settings")
	require.Equal(t, decrypt.FormatJSON, f)
	res, err := d.Document(context.Background(), compact.Bytes(), f, nil)
	require.NoError(t, err)
	assert.Equal(t, string(sopskit.SopsDecrypt(t, enc, "json", r)), string(res.Plaintext))
}

func TestDocumentShamirNeedsThreshold(t *testing.T) {
	a, b := sopskit.NewAgeKey(t, false), sopskit.NewAgeKey(t, false)
	enc := sopskit.SopsEncryptGroups(t, samples["yaml"].plain, "yaml", [][]sopskit.AgeKey{{a}, {b}}, 2)
	require.Equal(t, 2, strings.Count(string(enc), "recipient: "))

	t.Run("one of two groups is not enough", func(t *testing.T) {
		d := newDecryptor(t, loadAge(t, "a", a))
		_, err := d.Document(context.Background(), enc, decrypt.FormatYAML, nil)
		assert.True(t, decrypt.IsReason(err, decrypt.ReasonNoKey), "got %v", err)
	})
	t.Run("both groups reach the threshold", func(t *testing.T) {
		d := newDecryptor(t, loadAge(t, "a", a), loadAge(t, "b", b))
		res, err := d.Document(context.Background(), enc, decrypt.FormatYAML, nil)
		require.NoError(t, err)
		assert.Equal(t, []string{"a", "b"}, res.Keys)
		assert.Equal(t, string(samples["yaml"].plain), string(res.Plaintext))
	})
}

func TestDocumentFailures(t *testing.T) {
	held := sopskit.NewAgeKey(t, false)
	other := sopskit.NewAgeKey(t, false)
	d := newDecryptor(t, loadAge(t, "held", held))
	mine := sopskit.Recipients{Age: []sopskit.AgeKey{held}}

	plainYAML := []byte("user: app\npassword: s3cr3t-fail-VALUE\nnote_unencrypted: public\n")
	encYAML := sopskit.SopsEncrypt(t, plainYAML, "yaml", mine, "--unencrypted-suffix", "_unencrypted")
	encOther := sopskit.SopsEncrypt(t, plainYAML, "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{other}})

	tests := []struct {
		name   string
		value  []byte
		format decrypt.Format
		reason decrypt.Reason
		hint   string
	}{
		{"unknown key", encOther, decrypt.FormatYAML, decrypt.ReasonNoKey, other.Recipient},
		{"tampered unencrypted value breaks the MAC",
			bytes.Replace(encYAML, []byte("note_unencrypted: public"), []byte("note_unencrypted: forged"), 1),
			decrypt.FormatYAML, decrypt.ReasonMAC, ""},
		{"swapped ciphertexts fail authentication", swapValues(t, encYAML), decrypt.FormatYAML, decrypt.ReasonCorrupt, ""},
		{"removed MAC", dropLine(encYAML, "    mac: "), decrypt.FormatYAML, decrypt.ReasonNoMAC, ""},
		{"not yaml", []byte("sops: [\nENC[AES256_GCM,data:"), decrypt.FormatYAML, decrypt.ReasonMalformed, ""},
		{"a key defined twice", append(bytes.Clone(encYAML), "user: again\n"...), decrypt.FormatYAML, decrypt.ReasonMalformed, "does not parse"},
		{"a YAML alias", append(bytes.Clone(encYAML), "again: &x v\nalso: *x\n"...), decrypt.FormatYAML, decrypt.ReasonMalformed, "YAML alias"},
		{"too large", append(bytes.Repeat([]byte("#"), decrypt.MaxDocumentSize), encYAML...), decrypt.FormatYAML, decrypt.ReasonTooLarge, ""},
		{"tokens are not a document", []byte("x: ENC[AES256_GCM,data:a,iv:b,tag:c,type:str]"), decrypt.FormatTokens, decrypt.ReasonUnsupported, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.Document(context.Background(), tt.value, tt.format, nil)
			require.Error(t, err)
			assert.True(t, decrypt.IsReason(err, tt.reason), "got %v", err)
			assert.Contains(t, err.Error(), tt.hint)
			assert.NotContains(t, err.Error(), "s3cr3t")
		})
	}
}

// TestDocumentTypeBytesDoesNotCrash relabels values type:bytes, which makes
// the sops library panic while emitting; the decryptor must recover and
// refuse the document as malformed.
func TestDocumentTypeBytesDoesNotCrash(t *testing.T) {
	k := sopskit.NewAgeKey(t, false)
	d := newDecryptor(t, loadAge(t, "k", k))
	for _, format := range []string{"yaml", "json", "dotenv", "ini"} {
		t.Run(format, func(t *testing.T) {
			enc := sopskit.SopsEncrypt(t, samples[format].plain, format, sopskit.Recipients{Age: []sopskit.AgeKey{k}})
			hostile := bytes.ReplaceAll(enc, []byte("type:str]"), []byte("type:bytes]"))
			require.NotEqual(t, enc, hostile)
			f := decrypt.Detect(hostile, samples[format].file)
			_, err := d.Document(context.Background(), hostile, f, nil)
			// sops panics emitting a type:bytes value in every text format;
			// the recovered panic is a malformed document, and says so.
			require.Error(t, err)
			assert.True(t, decrypt.IsReason(err, decrypt.ReasonMalformed), "got %v", err)
			assert.Contains(t, err.Error(), "the sops library rejected its content", "the panic was recovered")
			assert.NotContains(t, err.Error(), "s3cr3t")
		})
	}
}

func swapValues(t *testing.T, enc []byte) []byte {
	t.Helper()
	lines := strings.Split(string(enc), "\n")
	var idx []int
	for i, l := range lines {
		if strings.HasPrefix(l, "user: ENC[") || strings.HasPrefix(l, "password: ENC[") {
			idx = append(idx, i)
		}
	}
	require.Len(t, idx, 2)
	a, _ := strings.CutPrefix(lines[idx[0]], "user: ")
	b, _ := strings.CutPrefix(lines[idx[1]], "password: ")
	lines[idx[0]], lines[idx[1]] = "user: "+b, "password: "+a
	return []byte(strings.Join(lines, "\n"))
}

func dropLine(enc []byte, prefix string) []byte {
	var out []string
	for _, l := range strings.Split(string(enc), "\n") {
		if !strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return []byte(strings.Join(out, "\n"))
}
