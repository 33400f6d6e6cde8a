package decrypt

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/getsops/sops/v3"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/internal/store"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/internal/token"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/internal/quote"
)

// MaxIndexSize caps the values index. It is the API server's limit for all
// annotations of an object together, so no index the API server would store
// is refused.
const MaxIndexSize = 256 << 10

// MaxTokens caps the ENC[...] tokens one Tokens decrypts, which bounds the
// work a single request can cause. A values file with a thousand secrets,
// each used several times, stays well inside it.
const MaxTokens = 10_000

// maxPathInMessage caps a values path quoted in a message: the path is
// public structure (key names, never values) but comes from the request.
const maxPathInMessage = 200

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

// ParseIndex parses a values index: the JSON of a values file's sops
// metadata and each token's values path, as the chart helper renders it.
// Errors are *Error.
func ParseIndex(annotation []byte) (idx *Index, err error) {
	if len(annotation) > MaxIndexSize {
		return nil, fail(ReasonTooLarge, fmt.Sprintf("the values index is limited to %d bytes", MaxIndexSize))
	}
	var raw indexJSON
	if err := json.Unmarshal(annotation, &raw); err != nil {
		return nil, fail(ReasonBadIndex, "it is not an index's JSON")
	}
	if len(raw.Sops) == 0 || bytes.Equal(raw.Sops, []byte("null")) {
		return nil, fail(ReasonBadIndex, "it holds no sops metadata: the values file it was made from was not encrypted with sops")
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
		i := bytes.Index(rest, token.Marker)
		if i < 0 {
			break
		}
		if t.count++; t.count > MaxTokens {
			return nil, fail(ReasonTooLarge, fmt.Sprintf("more than %d ENC[...] tokens in one object", MaxTokens))
		}
		tok, n, err := token.Parse(rest[i:])
		if err != nil {
			return nil, errMalformedToken
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

// errMalformedToken is the error of a token that does not parse.
var errMalformedToken = fail(ReasonMalformed, token.ErrMalformed.Error())

// open decrypts one token with the path the index gives its tag.
func (t *Tokens) open(ctx context.Context, tok token.Token) ([]byte, error) {
	if t.idx == nil {
		return nil, fail(ReasonNoIndex, "")
	}
	path, ok := t.idx.paths[string(tok.Tag)]
	if !ok {
		return nil, fail(ReasonNotIndexed, "")
	}
	aead, err := t.cipher(ctx, len(tok.IV))
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(tok.Sealed[:0], tok.IV, tok.Sealed, []byte(path))
	if err != nil {
		return nil, fail(ReasonCorrupt, fmt.Sprintf("the token for values path %s does not authenticate: the token or its path was edited, or it comes from another encrypted values file than the index (pass one encrypted values file per release)", quote.Capped(path, maxPathInMessage)))
	}
	return render(tok.Type, plain)
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
		return nil, nil, fail(ReasonNoKey, "the values file whose metadata the index holds: "+e.Detail)
	}
	if err != nil {
		return nil, nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil || len(key) != store.DataKeySize {
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
	tree, err := stores[FormatJSON].Load(doc)
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
