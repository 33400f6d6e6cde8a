package keysource

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/getsops/sops/v3/keyservice"
)

// PGP is a Source of OpenPGP private keys, used in-process: gpg and
// gpg-agent are never run.
type PGP struct {
	name    string
	keyring openpgp.EntityList
	// fingerprints of the keyring's keys and subkeys, upper-case hex, for
	// Matches.
	fingerprints map[string]bool
}

// LoadPGP reads an armored or binary OpenPGP private key file. A key without
// secret material or protected by a passphrase is refused. Errors name the
// file, never its content.
func LoadPGP(name, path string) (*PGP, error) {
	raw, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	ring, err := ParsePGPKeyring(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	p := &PGP{name: name, keyring: ring, fingerprints: map[string]bool{}}
	for _, e := range ring {
		p.fingerprints[strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))] = true
		for _, sk := range e.Subkeys {
			p.fingerprints[strings.ToUpper(hex.EncodeToString(sk.PublicKey.Fingerprint))] = true
		}
	}
	return p, nil
}

// ParsePGPKeyring parses armored or binary OpenPGP private keys. It fails when
// the input holds no unprotected private key.
func ParsePGPKeyring(raw []byte) (openpgp.EntityList, error) {
	var (
		ring openpgp.EntityList
		err  error
	)
	if bytes.Contains(raw, []byte("-----BEGIN PGP")) {
		ring, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(raw))
	} else {
		ring, err = openpgp.ReadKeyRing(bytes.NewReader(raw))
	}
	if err != nil {
		return nil, errors.New("not an OpenPGP key")
	}
	private := 0
	for _, e := range ring {
		if e.PrivateKey == nil {
			continue
		}
		if e.PrivateKey.Encrypted {
			return nil, errors.New("private key is passphrase-protected; export it without a passphrase")
		}
		for _, sk := range e.Subkeys {
			if sk.PrivateKey != nil && sk.PrivateKey.Encrypted {
				return nil, errors.New("private subkey is passphrase-protected; export it without a passphrase")
			}
		}
		private++
	}
	if private == 0 {
		return nil, errors.New("no private key found")
	}
	return ring, nil
}

// Recipients returns the primary fingerprints of p's keyring, upper-case
// hex, in keyring order: what a .sops.yaml names.
func (p *PGP) Recipients() []string {
	out := make([]string, len(p.keyring))
	for i, e := range p.keyring {
		out[i] = strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
	}
	return out
}

// Name returns the key's configured name.
func (p *PGP) Name() string { return p.name }

// Unwrap opens an armored OpenPGP message holding a data key. It returns
// ErrNotHeld for a non-PGP key or when the message is not encrypted to this
// keyring.
func (p *PGP) Unwrap(_ context.Context, key *keyservice.Key, ciphertext []byte) ([]byte, error) {
	if key.GetPgpKey() == nil {
		return nil, ErrNotHeld
	}
	block, err := armor.Decode(bytes.NewReader(ciphertext))
	if err != nil {
		return nil, errors.New("malformed OpenPGP armor")
	}
	body, err := io.ReadAll(io.LimitReader(block.Body, MaxWrappedKeySize))
	if err != nil {
		return nil, errors.New("malformed OpenPGP armor")
	}
	if n := pgpKeyPackets(body); n > MaxPGPKeyPackets {
		return nil, fmt.Errorf("OpenPGP message with more than %d encrypted-key packets", MaxPGPKeyPackets)
	}
	prompt := func([]openpgp.Key, bool) ([]byte, error) { return nil, ErrNotHeld }
	md, err := openpgp.ReadMessage(bytes.NewReader(body), p.keyring, prompt, nil)
	if err != nil {
		if errors.Is(err, ErrNotHeld) || errors.Is(err, pgperrors.ErrKeyIncorrect) {
			return nil, ErrNotHeld
		}
		return nil, errors.New("malformed OpenPGP message")
	}
	if !md.IsEncrypted {
		return nil, errors.New("OpenPGP message is not encrypted")
	}
	plain, err := io.ReadAll(io.LimitReader(md.UnverifiedBody, MaxDataKeySize+1))
	if err != nil {
		return nil, errors.New("OpenPGP message failed its integrity check")
	}
	return plain, nil
}

// MaxPGPKeyPackets caps the encrypted-key packets of a wrapped data key:
// each is tried against every private key of the keyring (all of them for
// a packet with the wildcard key ID 0), and sops writes one.
const MaxPGPKeyPackets = 4

// pgpKeyPackets counts the encrypted-key packets at the start of an
// OpenPGP message, up to MaxPGPKeyPackets+1; the packets after them are
// ReadMessage's to judge.
func pgpKeyPackets(body []byte) int {
	n := 0
	r := packet.NewReader(bytes.NewReader(body))
	for n <= MaxPGPKeyPackets {
		p, err := r.Next()
		if err != nil {
			return n
		}
		if _, ok := p.(*packet.EncryptedKey); !ok {
			return n
		}
		n++
	}
	return n
}
