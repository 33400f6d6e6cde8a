package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/getsops/sops/v3/keyservice"
	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

func TestReloaderSwapsValidConfigsAndKeepsTheOldOnError(t *testing.T) {
	a, b := sopskit.NewAgeKey(t, false), sopskit.NewAgeKey(t, false)
	docB := sopskit.SopsEncrypt(t, []byte("K=v\n"), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{b}})
	dir := t.TempDir()
	keyFile := writeFile(t, dir, "current.agekey", mustRead(t, a.IdentityFile))
	path := writeFile(t, dir, "config.yaml", "apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n- name: team\n  age: {identityFile: "+keyFile+"}\n")

	r, names, err := newReloader(path, engineDeps{}, logr.Discard())
	require.NoError(t, err)
	assert.Equal(t, []string{"team"}, names)
	var results []bool
	r.onReload = func(ok bool) { results = append(results, ok) }
	opens := func() bool {
		_, err := r.Engine().Decryptor.Document(context.Background(), docB, decrypt.FormatDotenv, nil)
		return err == nil
	}
	require.False(t, opens(), "key b is not configured yet")

	r.check()
	assert.Empty(t, results, "nothing changed, nothing reloaded")

	// The mounted key Secret changes: the same config now reads key b.
	require.NoError(t, os.WriteFile(keyFile, []byte(mustRead(t, b.IdentityFile)), 0o600))
	r.check()
	assert.Equal(t, []bool{true}, results)
	assert.True(t, opens(), "reloaded with key b")

	// An invalid config is reported once and ignored.
	require.NoError(t, os.WriteFile(path, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys: []\n"), 0o600))
	r.check()
	r.check()
	assert.Equal(t, []bool{true, false}, results)
	assert.True(t, opens(), "the previous config stays in use")

	// A policy that names no granted namespace for key "team" takes effect.
	require.NoError(t, os.WriteFile(path, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n- name: team\n  age: {identityFile: "+keyFile+"}\npolicy:\n- keys: [team]\n  namespaces: [elsewhere]\n"), 0o600))
	r.check()
	assert.Equal(t, []bool{true, false, true}, results)
	eng := r.Engine()
	require.NotNil(t, eng.Policy)
	_, err = eng.Decryptor.Document(context.Background(), docB, decrypt.FormatDotenv, eng.Policy.Access("here", "Secret", userInfo("u")))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `key "team" is not granted to Secrets in namespace "here"`)
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return string(b)
}

func userInfo(name string) authenticationv1.UserInfo {
	return authenticationv1.UserInfo{Username: name}
}

func TestReloaderClosesTheReplacedRing(t *testing.T) {
	a := sopskit.NewAgeKey(t, false)
	dir := t.TempDir()
	// Credentials that fail at once: the open ring's unwrap never looks
	// for a metadata server.
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(dir, "absent.json"))
	keyFile := writeFile(t, dir, "a.agekey", mustRead(t, a.IdentityFile))
	const gcpKey = "- name: gcp\n  gcpKms: {resourceID: projects/p/locations/global/keyRings/r/cryptoKeys/k}\n"
	path := writeFile(t, dir, "config.yaml", "apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n"+gcpKey)
	r, _, err := newReloader(path, engineDeps{retireAfter: time.Millisecond}, logr.Discard())
	require.NoError(t, err)
	old := r.current.Load().ring
	unwrap := func(ring *keysource.Ring) error {
		_, err := ring.Client(context.Background(), nil).Decrypt(context.Background(), &keyservice.DecryptRequest{
			Key:        &keyservice.Key{KeyType: &keyservice.Key_GcpKmsKey{GcpKmsKey: &keyservice.GcpKmsKey{ResourceId: "projects/p/locations/global/keyRings/r/cryptoKeys/k"}}},
			Ciphertext: []byte("eA=="),
		})
		return err
	}
	require.NotContains(t, fmt.Sprint(unwrap(old)), "replaced by a config reload")

	require.NoError(t, os.WriteFile(path, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n"+gcpKey+"- name: age\n  age: {identityFile: "+keyFile+"}\n"), 0o600))
	r.check()
	require.NotSame(t, old, r.current.Load().ring, "reloaded")
	assert.Eventually(t, func() bool {
		return strings.Contains(fmt.Sprint(unwrap(old)), "replaced by a config reload")
	}, 5*time.Second, 5*time.Millisecond, "the replaced ring is closed")
	assert.NotContains(t, fmt.Sprint(unwrap(r.current.Load().ring)), "replaced by a config reload", "the new ring is open")
	require.NoError(t, r.close())
	assert.Contains(t, fmt.Sprint(unwrap(r.current.Load().ring)), "replaced by a config reload", "closed when the webhook stops")
}
