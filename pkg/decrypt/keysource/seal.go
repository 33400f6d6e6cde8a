package keysource

import (
	"bytes"
	"fmt"
	"strings"

	"filippo.io/age"
	"filippo.io/age/armor"
)

// ParseAgeRecipient parses an age recipient, X25519 (age1...) or hybrid
// (age1pq1...); plugin recipients are refused. The error quotes the
// recipient, which is public.
func ParseAgeRecipient(r string) (age.Recipient, error) {
	var (
		rc  age.Recipient
		err error
	)
	if strings.HasPrefix(r, "age1pq1") {
		rc, err = age.ParseHybridRecipient(r)
	} else {
		rc, err = age.ParseX25519Recipient(r)
	}
	if err != nil {
		return nil, fmt.Errorf("%q is not an age X25519 or hybrid recipient", r)
	}
	return rc, nil
}

// SealAge encrypts plaintext for every recipient, as an armored age file:
// the form sops stores a wrapped data key in. Errors name a recipient,
// never the plaintext.
func SealAge(plaintext []byte, recipients ...string) ([]byte, error) {
	var to []age.Recipient
	for _, r := range recipients {
		rc, err := ParseAgeRecipient(r)
		if err != nil {
			return nil, err
		}
		to = append(to, rc)
	}
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, to...)
	if err == nil {
		_, err = w.Write(plaintext)
	}
	if err == nil {
		err = w.Close()
	}
	if err == nil {
		err = aw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("age encryption: %w", err)
	}
	return buf.Bytes(), nil
}
