package decrypt_test

import (
	"context"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// encTokens matches the encrypted values and the MAC of a document.
var encTokens = regexp.MustCompile(`ENC\[AES256_GCM,data:[^\]]*\]`)

// generation returns a generated key's identity as a keysource generation,
// with its identity file for the sops CLI.
func generation(t *testing.T, n int, pq bool) (keysource.AgeGeneration, sopskit.AgeKey) {
	t.Helper()
	key := sopskit.NewAgeKey(t, pq)
	raw, err := os.ReadFile(key.IdentityFile)
	require.NoError(t, err)
	ids, err := keysource.ParseAgeIdentities(raw)
	require.NoError(t, err)
	return keysource.AgeGeneration{Number: n, Identity: ids[0]}, key
}

func TestRewrap(t *testing.T) {
	g1, key1 := generation(t, 1, false)
	g2, key2 := generation(t, 2, true)
	_, breakGlass := generation(t, 0, false)
	ring, err := keysource.NewRing(keysource.NewAgeGenerations("cluster", []keysource.AgeGeneration{g2, g1}))
	require.NoError(t, err)
	d := decrypt.New(ring)
	targets := func(drop bool) decrypt.RewrapTargets {
		return func(opened string) (decrypt.RewrapPlan, error) {
			if opened != "cluster@1" && opened != "cluster@2" {
				return decrypt.RewrapPlan{}, errors.New("unexpected key " + opened)
			}
			var retired []string
			if drop {
				retired = []string{key1.Recipient}
			}
			return decrypt.RewrapPlan{Add: []string{key2.Recipient, breakGlass.Recipient}, Drop: retired}, nil
		}
	}
	plain := map[string]string{
		"yaml":   "db:\n    password: PLAINTEXT-rewrap\n    port: 5432\n",
		"json":   "{\n\t\"password\": \"PLAINTEXT-rewrap\"\n}",
		"dotenv": "PASSWORD=PLAINTEXT-rewrap\n",
		"ini":    "[db]\npassword = PLAINTEXT-rewrap\n",
		"binary": "PLAINTEXT-rewrap\x00\x01",
	}
	for format, text := range plain {
		for _, drop := range []bool{false, true} {
			name := format
			if drop {
				name += "/dropping the retired generation"
			}
			t.Run(name, func(t *testing.T) {
				f := decrypt.Format(format)
				enc := sopskit.SopsEncrypt(t, []byte(text), format, sopskit.Recipients{Age: []sopskit.AgeKey{key1}})
				got, err := d.Rewrap(context.Background(), enc, f, nil, targets(drop))
				require.NoError(t, err)
				assert.Equal(t, []string{"cluster@1"}, got.Keys)
				assert.Equal(t, []string{key2.Recipient, breakGlass.Recipient}, got.Added)
				assert.NotContains(t, string(got.File), "PLAINTEXT", "no plaintext in the answer")

				// The values and the MAC are the very same ciphertext.
				before, after := encTokens.FindAllString(string(enc), -1), encTokens.FindAllString(string(got.File), -1)
				require.NotEmpty(t, before)
				slices.Sort(before)
				slices.Sort(after)
				assert.Equal(t, before, after, "values and MAC unchanged")

				// The new generation, and the break-glass identity alone,
				// open it with the sops CLI, which checks the MAC.
				want := sopskit.SopsDecrypt(t, enc, format, sopskit.Recipients{Age: []sopskit.AgeKey{key1}})
				for _, k := range []sopskit.AgeKey{key2, breakGlass} {
					assert.Equal(t, string(want), string(sopskit.SopsDecrypt(t, got.File, format, sopskit.Recipients{Age: []sopskit.AgeKey{k}})))
				}
				assert.Equal(t, !drop, strings.Contains(string(got.File), key1.Recipient), "generation 1's recipient")
				if drop {
					assert.Equal(t, []string{key1.Recipient}, got.Dropped)
				}

				// A rewrapped file rewraps to itself: nothing is added twice.
				again, err := d.Rewrap(context.Background(), got.File, f, nil, targets(drop))
				require.NoError(t, err)
				assert.Empty(t, again.Added)
				assert.Equal(t, []string{"cluster@2"}, again.Keys, "the current generation comes first, and opens it")
			})
		}
	}
}

func TestRewrapRefusals(t *testing.T) {
	g1, key1 := generation(t, 1, false)
	_, other := generation(t, 0, false)
	_, stranger := generation(t, 0, false)
	team, err := keysource.LoadAge("team", other.IdentityFile)
	require.NoError(t, err)
	ring, err := keysource.NewRing(keysource.NewAgeGenerations("cluster", []keysource.AgeGeneration{g1}), team)
	require.NoError(t, err)
	d := decrypt.New(ring)
	add := func(string) (decrypt.RewrapPlan, error) {
		return decrypt.RewrapPlan{Add: []string{other.Recipient}}, nil
	}
	doc := sopskit.SopsEncrypt(t, []byte("k: PLAINTEXT-refused\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key1}})

	tests := []struct {
		name    string
		doc     []byte
		access  keysource.Access
		targets decrypt.RewrapTargets
		reason  decrypt.Reason
	}{
		{"a key the request may not use", doc, onlyKey("team"), add, decrypt.ReasonNotGranted},
		{"a key that cannot be rewrapped", doc, nil, func(string) (decrypt.RewrapPlan, error) {
			return decrypt.RewrapPlan{}, errors.New(`key "cluster" is not generated in the cluster`)
		}, decrypt.ReasonUnsupported},
		{"a tampered MAC", []byte(strings.Replace(string(doc), "mac: ENC[AES256_GCM,data:", "mac: ENC[AES256_GCM,data:AA", 1)), nil, add, decrypt.ReasonNoMAC},
		{"a key of nobody here", sopskit.SopsEncrypt(t, []byte("k: v\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{stranger}}), nil, add, decrypt.ReasonNoKey},
		{"several key groups", sopskit.SopsEncryptGroups(t, []byte("k: v\n"), "yaml", [][]sopskit.AgeKey{{key1}, {other}}, 2), nil, add, decrypt.ReasonUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.Rewrap(context.Background(), tt.doc, decrypt.FormatYAML, tt.access, tt.targets)
			require.Error(t, err)
			assert.True(t, decrypt.IsReason(err, tt.reason), "got %v", err)
			assert.Empty(t, got.File)
			assert.NotContains(t, err.Error(), "PLAINTEXT")
		})
	}
}
