package token

import (
	"bytes"
	"encoding/base64"
	"errors"
)

// Marker starts every token, and so every SOPS document and values payload
// (the MAC is a token too).
var Marker = []byte("ENC[AES256_GCM,data:")

// MaxPartSize caps each base64 part of a token. A token's data is at most
// a Kubernetes object's size; its iv and tag are 44 and 24 characters.
const MaxPartSize = 2 << 20

// maxTypeName caps a token's type name; sops' longest is "comment".
const maxTypeName = 16

// tagSize is the size of an AES-GCM tag; minIVSize the least nonce sops
// or anyone else would use.
const (
	tagSize   = 16
	minIVSize = 12
)

// ErrMalformed is Parse's error: one value, as it quotes nothing.
var ErrMalformed = errors.New("a truncated or malformed ENC[...] token")

// Token is one parsed token. Its decoded fields share one buffer, the
// ciphertext and the tag side by side as AES-GCM opens them (Sealed), so a
// token costs one allocation.
type Token struct {
	Data, IV []byte
	// Sealed is Data followed by the tag; opening it in place is allowed.
	Sealed []byte
	// Tag is the tag as written, a slice of the parsed text.
	Tag  []byte
	Type string
}

// Parse parses the token at the start of s and returns it with its length
// in bytes, or ErrMalformed. The grammar is Scan's. The token's Tag refers
// to s.
func Parse(s []byte) (tok Token, n int, err error) {
	text, typ, n := Scan(s)
	if n == 0 {
		return Token{}, 0, ErrMalformed
	}
	tok.Type = TypeName(typ)

	b64 := base64.StdEncoding
	data, iv, tag := text[0], text[1], text[2]
	buf := make([]byte, b64.DecodedLen(len(data))+b64.DecodedLen(len(tag))+b64.DecodedLen(len(iv)))
	dn, err := b64.Decode(buf, data)
	if err != nil {
		return Token{}, 0, ErrMalformed
	}
	tn, err := b64.Decode(buf[dn:], tag)
	if err != nil || tn != tagSize {
		return Token{}, 0, ErrMalformed
	}
	in, err := b64.Decode(buf[dn+tn:], iv)
	if err != nil || in < minIVSize {
		return Token{}, 0, ErrMalformed
	}
	tok.Data = buf[:dn:dn]
	tok.Sealed = buf[: dn+tn : dn+tn]
	tok.IV = buf[dn+tn : dn+tn+in : dn+tn+in]
	tok.Tag = tag
	return tok, n, nil
}

// Scan reads the token at the start of s in the grammar sops writes,
// ENC[AES256_GCM,data:B64,iv:B64,tag:B64,type:NAME], without decoding it:
// the data, iv and tag as written, the type name, and the token's length,
// 0 when s does not start with such a token.
func Scan(s []byte) (text [3][]byte, typ []byte, n int) {
	if !bytes.HasPrefix(s, Marker) {
		return text, nil, 0
	}
	n = len(Marker)
	for i, prefix := range [...]string{"", ",iv:", ",tag:"} {
		if len(s)-n < len(prefix) || string(s[n:n+len(prefix)]) != prefix {
			return text, nil, 0
		}
		n += len(prefix)
		start := n
		for n < len(s) && n-start <= MaxPartSize && base64Char[s[n]] {
			n++
		}
		text[i] = s[start:n]
	}
	if len(s)-n < len(",type:") || string(s[n:n+len(",type:")]) != ",type:" {
		return text, nil, 0
	}
	n += len(",type:")
	start := n
	for n < len(s) && n-start < maxTypeName && s[n] >= 'a' && s[n] <= 'z' {
		n++
	}
	if n == start || n >= len(s) || s[n] != ']' {
		return text, nil, 0
	}
	return text, s[start:n], n + 1
}

// TypeName returns a token's type name, the names sops writes without
// allocating.
func TypeName(b []byte) string {
	switch string(b) {
	case "str":
		return "str"
	case "int":
		return "int"
	case "float":
		return "float"
	case "bool":
		return "bool"
	case "time":
		return "time"
	case "comment":
		return "comment"
	case "bytes":
		return "bytes"
	}
	return string(b)
}

// IsBase64Char reports whether c may appear in a token's base64 part.
func IsBase64Char(c byte) bool { return base64Char[c] }

var base64Char = func() (t [256]bool) {
	for c := range t {
		t[c] = c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '='
	}
	return t
}()
