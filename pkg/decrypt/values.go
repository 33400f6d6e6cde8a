package decrypt

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/getsops/sops/v3"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/internal/quote"
)

// MaxIndexSize caps the values index (the sops-webhook.io/values
// annotation). It is the API server's limit for all annotations of an object
// together, so no index the API server would store is refused.
const MaxIndexSize = 256 << 10

// MaxTokens caps the ENC[...] tokens one Tokens decrypts, which bounds the
// work a single request can cause. A values file with a thousand secrets,
// each used several times, stays well inside it.
const MaxTokens = 10_000

// maxTokenPartSize caps each base64 part of a token. A token's data is at
// most a Kubernetes object's size; its iv and tag are 44 and 24 characters.
const maxTokenPartSize = 2 << 20

// maxPathInMessage caps a values path quoted in a message: the path is
// public structure (key names, never values) but comes from the request.
const maxPathInMessage = 200

// hintHelper is the hint for tokens the index cannot place.
const hintHelper = `render the sops-webhook.io/values annotation with {{ include "sops-webhook.values" . }} in the same template, from the same values`

// Index parses a values index like ParseIndex, through the result cache:
// an index is public metadata, and one values file's index is sent with
// every object of its release.
func (d *Decryptor) Index(annotation []byte) (*Index, error) {
	if len(annotation) > MaxIndexSize {
		return ParseIndex(annotation)
	}
	k := resultKey("index", annotation)
	if v, ok := d.results.Get(k); ok {
		return v.(*Index), nil
	}
	idx, err := ParseIndex(annotation)
	if err == nil {
		idx.digest = k
		d.results.Put(k, idx, 2*len(annotation))
	}
	return idx, err
}

// tokensResult is a cached Tokens.Decrypt output.
type tokensResult struct {
	plain []byte
	keys  []string
}

// Index is a parsed values index: the metadata of an encrypted values file
// and, for each of its tokens, the values path sops authenticated it with.
type Index struct {
	metadata sops.Metadata
	paths    map[string]string
	// digest identifies the annotation the index was parsed from, for the
	// result cache.
	digest [32]byte
}

// indexJSON is the annotation's shape (docs/reference.md §2.2).
type indexJSON struct {
	Sops  json.RawMessage   `json:"sops"`
	Paths map[string]string `json:"paths"`
}

// ParseIndex parses the sops-webhook.io/values annotation, as the
// sops-webhook.values Helm helper renders it. Errors are *Error.
func ParseIndex(annotation []byte) (idx *Index, err error) {
	if len(annotation) > MaxIndexSize {
		return nil, fail(ReasonTooLarge, fmt.Sprintf("the values index is limited to %d bytes", MaxIndexSize))
	}
	var raw indexJSON
	if err := json.Unmarshal(annotation, &raw); err != nil {
		return nil, fail(ReasonBadIndex, "it is not the JSON the helper renders; "+hintHelper)
	}
	if len(raw.Sops) == 0 || bytes.Equal(raw.Sops, []byte("null")) {
		return nil, fail(ReasonBadIndex, "it holds no sops metadata: was the values file passed to helm encrypted with sops?")
	}
	m, err := parseMetadata(raw.Sops)
	if err != nil {
		return nil, err
	}
	return &Index{metadata: m, paths: raw.Paths}, nil
}

// Tokens decrypts the ENC[...] tokens of one object's values payloads with
// one Index. The data key is unwrapped at most once, on the first token that
// needs it. A Tokens is used by one request and is not safe for concurrent
// use.
type Tokens struct {
	d      *Decryptor
	idx    *Index
	access keysource.Access
	count  int

	unwrapped bool
	block     cipher.Block
	aead      map[int]cipher.AEAD // by nonce size
	keys      []string
	err       error
}

// Tokens returns a Tokens that decrypts with idx and the keys access allows
// (nil: all); idx may be nil, in which case every token is refused with
// ReasonNoIndex.
func (d *Decryptor) Tokens(idx *Index, access keysource.Access) *Tokens {
	return &Tokens{d: d, idx: idx, access: access}
}

// Keys returns the names of the configured keys that unwrapped the data key,
// once a token has been decrypted.
func (t *Tokens) Keys() []string { return t.keys }

// Decrypt returns value with every ENC[...] token replaced by its plain text,
// rendered as Helm renders the plain value: numbers as Go's fmt prints a
// float64 (42, 3.14, 1e+06), booleans as true and false, strings and times
// as they are. Either every token is replaced or an *Error is returned.
func (t *Tokens) Decrypt(ctx context.Context, value []byte) ([]byte, error) {
	var k [32]byte
	cacheable := t.idx != nil && t.idx.digest != [32]byte{} && t.d.results != nil
	if cacheable {
		k = resultKey("tokens", t.idx.digest[:], value)
		if v, ok := t.d.results.Get(k); ok {
			r := v.(tokensResult)
			if allowsAll(ctx, t.access, r.keys) {
				t.keys = mergeKeys(t.keys, r.keys)
				return r.plain, nil
			}
		}
	}
	plain, err := t.decrypt(ctx, value)
	if err == nil && cacheable && len(t.keys) > 0 {
		t.d.results.Put(k, tokensResult{plain: plain, keys: t.keys}, 2*len(plain)+len(value))
	}
	return plain, err
}

// mergeKeys returns the sorted union of two sorted key lists.
func mergeKeys(a, b []string) []string {
	out := append(append([]string(nil), a...), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

func (t *Tokens) decrypt(ctx context.Context, value []byte) ([]byte, error) {
	var out bytes.Buffer
	rest := value
	for {
		i := bytes.Index(rest, tokenMarker)
		if i < 0 {
			break
		}
		if t.count++; t.count > MaxTokens {
			return nil, fail(ReasonTooLarge, fmt.Sprintf("more than %d ENC[...] tokens in one object", MaxTokens))
		}
		tok, n, err := parseToken(rest[i:])
		if err != nil {
			return nil, err
		}
		plain, err := t.open(ctx, tok)
		if err != nil {
			return nil, err
		}
		if out.Len() == 0 {
			out.Grow(len(value))
		}
		out.Write(rest[:i])
		out.Write(plain)
		rest = rest[i+n:]
	}
	out.Write(rest)
	return out.Bytes(), nil
}

// open decrypts one token with the path the index gives its tag.
func (t *Tokens) open(ctx context.Context, tok token) ([]byte, error) {
	if t.idx == nil {
		return nil, fail(ReasonNoIndex, hintHelper+"; a document payload must be the complete file sops wrote")
	}
	path, ok := t.idx.paths[string(tok.tag)]
	if !ok {
		return nil, fail(ReasonNotIndexed, hintHelper+"; was the annotation rendered from other values than the token?")
	}
	aead, err := t.cipher(ctx, len(tok.iv))
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(tok.sealed[:0], tok.iv, tok.sealed, []byte(path))
	if err != nil {
		return nil, fail(ReasonCorrupt, fmt.Sprintf("the token for values path %s does not authenticate: the token or its path was edited, or it comes from another encrypted values file than the index (pass one encrypted values file per release)", quote.Capped(path, maxPathInMessage)))
	}
	return render(tok.typ, plain)
}

// cipher returns the AES-GCM of the index's data key for a nonce size,
// unwrapping the data key on first use. A failed unwrap is remembered, so a
// request asks the key sources once however many tokens it holds.
func (t *Tokens) cipher(ctx context.Context, nonceSize int) (cipher.AEAD, error) {
	if !t.unwrapped {
		t.unwrapped = true
		t.block, t.keys, t.err = t.d.blockFor(ctx, t.idx.metadata, t.access)
		t.aead = make(map[int]cipher.AEAD, 1)
	}
	if t.err != nil {
		return nil, t.err
	}
	if a, ok := t.aead[nonceSize]; ok {
		return a, nil
	}
	a, err := cipher.NewGCMWithNonceSize(t.block, nonceSize)
	if err != nil {
		return nil, fail(ReasonMalformed, "a token's iv has an unusable size")
	}
	t.aead[nonceSize] = a
	return a, nil
}

// blockFor unwraps the data key of m and returns its AES block cipher.
func (d *Decryptor) blockFor(ctx context.Context, m sops.Metadata, access keysource.Access) (cipher.Block, []string, error) {
	key, keys, err := d.unwrap(ctx, m, access)
	var e *Error
	if errors.As(err, &e) && e.Reason == ReasonNoKey {
		return nil, nil, fail(ReasonNoKey, "the values file whose metadata the sops-webhook.values helper rendered: "+e.Hint)
	}
	if err != nil {
		return nil, nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil || len(key) != 32 {
		return nil, nil, fail(ReasonMalformed, "the data key is not an AES-256 key")
	}
	return block, keys, nil
}

// parseMetadata parses the sops metadata of a values file, given as JSON, with
// sops' own JSON store, exactly as sops reads a JSON file's "sops" key.
func parseMetadata(raw json.RawMessage) (m sops.Metadata, err error) {
	defer func() {
		if r := recover(); r != nil {
			m, err = sops.Metadata{}, fail(ReasonBadIndex, "the sops library rejected its metadata")
		}
	}()
	doc := make([]byte, 0, len(raw)+10)
	doc = append(append(append(doc, `{"sops":`...), raw...), '}')
	tree, err := stores[FormatJSON].LoadEncryptedFile(doc)
	if err != nil {
		return sops.Metadata{}, fail(ReasonBadIndex, "its sops metadata does not parse")
	}
	return tree.Metadata, nil
}

// render turns a token's plaintext into the text Helm would have rendered
// for the plain value. Helm reads values through JSON, so every number is a
// float64 printed by fmt; sops writes booleans as True and False.
func render(typ string, plain []byte) ([]byte, error) {
	switch typ {
	case "str", "time":
		return plain, nil
	case "int":
		n, err := strconv.ParseInt(string(plain), 10, 64)
		if err != nil {
			return nil, fail(ReasonMalformed, "a type:int token does not hold an integer")
		}
		return fmt.Append(nil, float64(n)), nil
	case "float":
		f, err := strconv.ParseFloat(string(plain), 64)
		if err != nil {
			return nil, fail(ReasonMalformed, "a type:float token does not hold a number")
		}
		return fmt.Append(nil, f), nil
	case "bool":
		b, err := strconv.ParseBool(string(plain))
		if err != nil {
			return nil, fail(ReasonMalformed, "a type:bool token does not hold a boolean")
		}
		return strconv.AppendBool(nil, b), nil
	}
	return nil, fail(ReasonUnsupported, fmt.Sprintf("ENC[...] tokens of type %q cannot appear in Helm values", typ))
}

// token is one parsed ENC[AES256_GCM,...] token. Its decoded fields share
// one buffer, the ciphertext and the tag side by side as AES-GCM opens
// them (sealed), so a token costs one allocation.
type token struct {
	data, iv []byte
	// sealed is data followed by the tag; opening it in place is allowed.
	sealed []byte
	// tag is the tag as written, a slice of the parsed text: the index's
	// key.
	tag []byte
	typ string
}

// parseToken parses the token at the start of s, which starts with
// tokenMarker, and returns it with its length in bytes. The grammar is the
// one sops writes (scanToken). The token's tag refers to s.
func parseToken(s []byte) (tok token, n int, err error) {
	text, typ, n := scanToken(s)
	if n == 0 {
		return token{}, 0, errMalformedToken
	}
	tok.typ = typeName(typ)

	b64 := base64.StdEncoding
	data, iv, tag := text[0], text[1], text[2]
	buf := make([]byte, b64.DecodedLen(len(data))+b64.DecodedLen(len(tag))+b64.DecodedLen(len(iv)))
	dn, err := b64.Decode(buf, data)
	if err != nil {
		return token{}, 0, errMalformedToken
	}
	tn, err := b64.Decode(buf[dn:], tag)
	if err != nil || tn != 16 {
		return token{}, 0, errMalformedToken
	}
	in, err := b64.Decode(buf[dn+tn:], iv)
	if err != nil || in < 12 {
		return token{}, 0, errMalformedToken
	}
	tok.data = buf[:dn:dn]
	tok.sealed = buf[: dn+tn : dn+tn]
	tok.iv = buf[dn+tn : dn+tn+in : dn+tn+in]
	tok.tag = tag
	return tok, n, nil
}

// scanToken reads the token at the start of s in the grammar sops writes,
// ENC[AES256_GCM,data:B64,iv:B64,tag:B64,type:NAME], without decoding it:
// the data, iv and tag as written, the type name, and the token's length,
// 0 when s does not start with such a token.
func scanToken(s []byte) (text [3][]byte, typ []byte, n int) {
	if !bytes.HasPrefix(s, tokenMarker) {
		return text, nil, 0
	}
	n = len(tokenMarker)
	for i, prefix := range [...]string{"", ",iv:", ",tag:"} {
		if len(s)-n < len(prefix) || string(s[n:n+len(prefix)]) != prefix {
			return text, nil, 0
		}
		n += len(prefix)
		start := n
		for n < len(s) && n-start <= maxTokenPartSize && base64Char[s[n]] {
			n++
		}
		text[i] = s[start:n]
	}
	if len(s)-n < len(",type:") || string(s[n:n+len(",type:")]) != ",type:" {
		return text, nil, 0
	}
	n += len(",type:")
	start := n
	for n < len(s) && n-start < 16 && s[n] >= 'a' && s[n] <= 'z' {
		n++
	}
	if n == start || n >= len(s) || s[n] != ']' {
		return text, nil, 0
	}
	return text, s[start:n], n + 1
}

// typeName returns a token's type name, the names sops writes without
// allocating.
func typeName(b []byte) string {
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

// errMalformedToken is parseToken's error: one value, as it quotes nothing.
var errMalformedToken = fail(ReasonMalformed, "a truncated or malformed ENC[...] token")

func isBase64Char(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '='
}
