package sopskit

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	agearmor "filippo.io/age/armor"
	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	sigsyaml "sigs.k8s.io/yaml"
)

// AgeKey is an age identity generated in-process with filippo.io/age.
type AgeKey struct {
	// IdentityFile is the path of the key file, in age-keygen's format.
	IdentityFile string
	// Recipient is the public key, age1... or age1pq1....
	Recipient string
}

// Config returns a webhook Config file that holds this one key, named
// name.
func (k AgeKey) Config(name string) []byte {
	return []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: " + name + "\n    age: {identityFile: " + k.IdentityFile + "}\n")
}

// NewAgeKey generates an X25519 identity (with pq, a post-quantum hybrid
// one) and writes it, as age-keygen would, into a temporary folder of t.
func NewAgeKey(t testing.TB, pq bool) AgeKey {
	t.Helper()
	var id interface {
		String() string
	}
	var recipient string
	if pq {
		k, err := age.GenerateHybridIdentity()
		if err != nil {
			t.Fatal(err)
		}
		id, recipient = k, k.Recipient().String()
	} else {
		k, err := age.GenerateX25519Identity()
		if err != nil {
			t.Fatal(err)
		}
		id, recipient = k, k.Recipient().String()
	}
	file := filepath.Join(t.TempDir(), "key.agekey")
	body := fmt.Sprintf("# created: %s\n# public key: %s\n%s\n", time.Now().UTC().Format(time.RFC3339), recipient, id.String())
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return AgeKey{IdentityFile: file, Recipient: recipient}
}

// PGPKey is an OpenPGP key generated in-process.
type PGPKey struct {
	// PrivateKeyFile holds the armored private key, as the webhook reads it.
	PrivateKeyFile string
	// GnupgHome holds pubring.gpg and secring.gpg, from which the sops CLI
	// encrypts and decrypts with OpenPGP in-process (no gpg binary needed).
	GnupgHome   string
	Fingerprint string
}

// NewPGPKey generates an OpenPGP key pair in a temporary folder of t.
func NewPGPKey(t testing.TB) PGPKey {
	t.Helper()
	dir := t.TempDir()
	e, err := openpgp.NewEntity("sops-webhook test", "", "test@sops-webhook.invalid", nil)
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "gnupg")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	var pub bytes.Buffer
	if err := e.Serialize(&pub); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "pubring.gpg"), pub.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var sec bytes.Buffer
	if err := e.SerializePrivate(&sec, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "secring.gpg"), sec.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var priv bytes.Buffer
	w, err := armor.Encode(&priv, openpgp.PrivateKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SerializePrivate(w, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "key.asc")
	if err := os.WriteFile(file, priv.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return PGPKey{
		PrivateKeyFile: file,
		GnupgHome:      home,
		Fingerprint:    strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint)),
	}
}

// DataKeyOf returns the data key of a YAML SOPS document encrypted for key
// (its first age recipient), unwrapped with the identity file: what a test
// needs to wrap the same data key for another key service by hand.
func DataKeyOf(t testing.TB, doc []byte, key AgeKey) []byte {
	t.Helper()
	var m struct {
		Sops struct {
			Age []struct {
				Enc string `json:"enc"`
			} `json:"age"`
		} `json:"sops"`
	}
	if err := sigsyaml.Unmarshal(doc, &m); err != nil || len(m.Sops.Age) == 0 {
		t.Fatalf("no age key in the document: %v", err)
	}
	raw, err := os.ReadFile(key.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	r, err := age.Decrypt(agearmor.NewReader(strings.NewReader(m.Sops.Age[0].Enc)), ids...)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return dk
}

// ReplaceAgeStanza replaces the age section of a YAML SOPS document's
// metadata with block (indented as sops writes it). The MAC covers values,
// not metadata, so the document stays valid.
func ReplaceAgeStanza(t testing.TB, doc []byte, block string) []byte {
	t.Helper()
	re := regexp.MustCompile(`(?s)    age:\n.*?(    lastmodified:)`)
	out := re.ReplaceAll(doc, []byte(block+"${1}"))
	if bytes.Equal(out, doc) {
		t.Fatal("no age section to replace")
	}
	return out
}
