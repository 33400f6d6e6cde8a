package store

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/getsops/sops/v3"
	sopsaes "github.com/getsops/sops/v3/aes"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/internal/token"
)

// Cipher decrypts the values of one document for sops' Tree.Decrypt
// and its MAC check, as sops' aes.Cipher does, but with one AES-GCM per
// nonce size for the document's data key instead of a new AES key schedule
// and GCM per value, and without the copy of every plaintext that sops'
// cipher keeps for a later re-encryption. A value in the form sops writes
// (ENC[AES256_GCM,data:…,iv:…,tag:…,type:…], parsed by token.Parse) of a
// type sops can return is decrypted here; anything else goes to sops' own
// cipher, so what sops accepts, refuses or panics on stays so. It is used
// by one document at a time, and only to decrypt.
type Cipher struct {
	key   []byte
	block cipher.Block
	aead  map[int]cipher.AEAD
	sops  sopsaes.Cipher
}

// DataKeySize is the size of a sops data key: an AES-256 key.
const DataKeySize = 32

// NewCipher returns the cipher for a document whose data key is key.
func NewCipher(key []byte) *Cipher {
	c := &Cipher{key: key, aead: make(map[int]cipher.AEAD, 1), sops: sopsaes.NewCipher()}
	if len(key) == DataKeySize {
		c.block, _ = aes.NewCipher(key) // an AES-256 key cannot fail
	}
	return c
}

// errEncrypt: the webhook never encrypts.
var errEncrypt = errors.New("the document cipher does not encrypt")

// Encrypt refuses: the webhook only decrypts.
func (c *Cipher) Encrypt(any, []byte, string) (string, error) { return "", errEncrypt }

// errOpen is sops' failure to authenticate a value, without its detail.
var errOpen = errors.New("could not decrypt with AES_GCM")

// Decrypt returns the plaintext of one value, authenticated with
// additionalData (its path, or the MAC's timestamp), as sops' cipher does.
func (c *Cipher) Decrypt(ciphertext string, key []byte, additionalData string) (any, error) {
	if ciphertext == "" {
		return "", nil
	}
	if !strings.HasPrefix(ciphertext, string(token.Marker)) {
		return c.sops.Decrypt(ciphertext, key, additionalData)
	}
	tok, n, err := token.Parse([]byte(ciphertext))
	if err != nil || n != len(ciphertext) || len(tok.Data) == 0 || c.block == nil || !bytes.Equal(key, c.key) {
		return c.sops.Decrypt(ciphertext, key, additionalData)
	}
	switch tok.Type {
	case "str", "int", "float", "bool", "time", "comment":
	default:
		// bytes (on which sops panics) and names sops refuses.
		return c.sops.Decrypt(ciphertext, key, additionalData)
	}
	a, ok := c.aead[len(tok.IV)]
	if !ok {
		if a, err = cipher.NewGCMWithNonceSize(c.block, len(tok.IV)); err != nil {
			return c.sops.Decrypt(ciphertext, key, additionalData)
		}
		c.aead[len(tok.IV)] = a
	}
	plain, err := a.Open(tok.Sealed[:0], tok.IV, tok.Sealed, []byte(additionalData))
	if err != nil {
		return nil, errOpen
	}
	s := string(plain)
	switch tok.Type {
	case "int":
		return strconv.Atoi(s)
	case "float":
		return strconv.ParseFloat(s, 64)
	case "bool":
		return strconv.ParseBool(s)
	case "time":
		var t time.Time
		err := t.UnmarshalText(plain)
		return t, err
	case "comment":
		return sops.Comment{Value: s}, nil
	}
	return s, nil
}
