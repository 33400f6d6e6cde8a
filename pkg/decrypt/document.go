package decrypt

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/keyservice"
	"github.com/getsops/sops/v3/logging"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/internal/store"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/internal/quote"
)

// MaxDocumentSize caps a document payload. It is the size of the largest
// Kubernetes Secret, so no legitimate value is refused.
const MaxDocumentSize = 1 << 20

// MaxMasterKeys caps the master keys a document's metadata may list, which
// bounds the unwrap attempts one document can cause.
const MaxMasterKeys = 64

// DiscardLibraryLogs silences the sops library's package-level loggers for
// the whole process. sops logs through them, and one logs a comment's value
// when it fails to decrypt, so a program that decrypts untrusted documents
// calls it once at startup. It changes global state, which is why it is not
// done in an init function.
func DiscardLibraryLogs() {
	for _, l := range logging.Loggers {
		l.SetOutput(io.Discard)
	}
}

// Decryptor decrypts SOPS documents with the keys of one keysource.Ring. It
// is safe for concurrent use.
type Decryptor struct {
	ring    *keysource.Ring
	results *resultCache
}

// New returns a Decryptor that uses only the keys in ring.
func New(ring *keysource.Ring, opts ...Option) *Decryptor {
	d := &Decryptor{ring: ring}
	for _, o := range opts {
		o(d)
	}
	return d
}

// Result is a decrypted document.
type Result struct {
	// Plaintext is what `sops decrypt` prints for the document.
	Plaintext []byte
	// Format is the document's format.
	Format Format
	// Keys are the names of the configured keys that unwrapped its data key.
	Keys []string

	// branches is the decrypted tree, kept for Entries.
	branches sops.TreeBranches
}

// Document decrypts value, a complete SOPS document of format f (from
// Detect), with the keys access allows (nil: all). The MAC is verified.
// Errors are always *Error. With a result cache, a document seen before is
// returned from it when access allows every key that opened it.
func (d *Decryptor) Document(ctx context.Context, value []byte, f Format, access keysource.Access) (Result, error) {
	k := resultKey("document:"+string(f), value)
	if v, ok := d.results.Get(k); ok {
		res := v.(Result)
		if allowsAll(ctx, access, res.Keys) {
			return res, nil
		}
	}
	res, err := d.document(ctx, value, f, access)
	if err == nil {
		// The tree is kept for Entries; count it like the plaintext.
		d.results.Put(k, res, 2*len(res.Plaintext)+len(value))
	}
	return res, err
}

// allowsAll reports whether access allows every named key.
func allowsAll(ctx context.Context, access keysource.Access, keys []string) bool {
	if len(keys) == 0 {
		return false
	}
	for _, k := range keys {
		if access != nil && access.Allowed(ctx, keysource.KeyName(k)) != nil {
			return false
		}
	}
	return true
}

func (d *Decryptor) document(ctx context.Context, value []byte, f Format, access keysource.Access) (res Result, err error) {
	defer func() {
		// Writing the tree is sops' for some formats, and may panic too.
		if r := recover(); r != nil {
			res, err = Result{}, fail(ReasonMalformed, "the sops library rejected its content")
		}
	}()
	tree, _, keys, err := d.open(ctx, value, f, access)
	if err != nil {
		return Result{}, err
	}
	out, err := stores[f].Emit(tree.Branches, len(value))
	if err != nil {
		return Result{}, fail(ReasonMalformed, fmt.Sprintf("its decrypted content cannot be written as %s", f))
	}
	return Result{Plaintext: out, Format: f, Keys: keys, branches: tree.Branches}, nil
}

// open parses value, unwraps its data key with the keys access allows,
// decrypts the tree in place and verifies the MAC. It returns the
// decrypted tree, the data key and the keys that opened it. Errors are
// *Error.
func (d *Decryptor) open(ctx context.Context, value []byte, f Format, access keysource.Access) (tree sops.Tree, dataKey []byte, keys []string, err error) {
	if !f.IsDocument() {
		return sops.Tree{}, nil, nil, fail(ReasonUnsupported, fmt.Sprintf("format %q is not a document format", f))
	}
	if len(value) > MaxDocumentSize {
		return sops.Tree{}, nil, nil, fail(ReasonTooLarge, fmt.Sprintf("documents are limited to %d bytes", MaxDocumentSize))
	}
	if n, most := Items(value), maxItems(f); n > most {
		return sops.Tree{}, nil, nil, fail(ReasonTooLarge, fmt.Sprintf("its structure counts %d items (two per line, one per list item, separator, bracket or comment); %s documents are limited to %d", n, f, most))
	}
	defer func() {
		// sops panics on some inputs (a value tagged type:bytes, for one).
		// The panic value may quote the input, so it is dropped.
		if r := recover(); r != nil {
			tree, dataKey, keys, err = sops.Tree{}, nil, nil, fail(ReasonMalformed, "the sops library rejected its content")
		}
	}()

	tree, err = stores[f].Load(value)
	if errors.Is(err, store.ErrAlias) {
		return sops.Tree{}, nil, nil, fail(ReasonMalformed, "it uses a YAML alias (*name), which sops never writes")
	}
	if err != nil {
		return sops.Tree{}, nil, nil, fail(ReasonMalformed, fmt.Sprintf("it does not parse as an encrypted %s document", f))
	}
	if store.TooDeep(tree.Branches) {
		return sops.Tree{}, nil, nil, fail(ReasonTooLarge, fmt.Sprintf("its maps and lists nest more than %d levels deep, the most the webhook accepts", MaxDocumentDepth))
	}
	if tree.Metadata.MessageAuthenticationCode == "" {
		return sops.Tree{}, nil, nil, fail(ReasonNoMAC, "")
	}
	dataKey, keys, err = d.unwrap(ctx, tree.Metadata, access)
	if err != nil {
		return sops.Tree{}, nil, nil, err
	}

	// A cipher per document: it holds the document's AES-GCM.
	cipher := store.NewCipher(dataKey)
	computed, err := tree.Decrypt(dataKey, cipher)
	if err != nil {
		return sops.Tree{}, nil, nil, fail(ReasonCorrupt, "")
	}
	stored, err := cipher.Decrypt(tree.Metadata.MessageAuthenticationCode, dataKey, tree.Metadata.LastModified.Format(time.RFC3339))
	if err != nil {
		return sops.Tree{}, nil, nil, fail(ReasonNoMAC, "the MAC itself failed authentication")
	}
	storedMAC, ok := stored.(string)
	if !ok || subtle.ConstantTimeCompare([]byte(storedMAC), []byte(computed)) != 1 {
		return sops.Tree{}, nil, nil, fail(ReasonMAC, "")
	}
	return tree, dataKey, keys, nil
}

// unwrap returns the data key of m and the names of the configured keys that
// unwrapped it. Only the Decryptor's ring is asked, and only for the keys
// access allows. Errors are *Error.
func (d *Decryptor) unwrap(ctx context.Context, m sops.Metadata, access keysource.Access) (dataKey []byte, keys []string, err error) {
	if n := countMasterKeys(m); n > MaxMasterKeys {
		return nil, nil, fail(ReasonTooLarge, fmt.Sprintf("%d master keys listed; at most %d are accepted", n, MaxMasterKeys))
	}
	client := d.ring.Client(ctx, access)
	dataKey, err = m.GetDataKeyWithKeyServices([]keyservice.KeyServiceClient{client}, nil)
	if err != nil {
		// Failures that are not the request's come first: with the
		// check or the key service working, the same request might pass.
		if ctx.Err() != nil {
			return nil, nil, fail(ReasonTimeout, "")
		}
		if exhausted := client.Exhausted(); len(exhausted) > 0 {
			return nil, nil, fail(ReasonTooMuchWork, joinUnique(exhausted))
		}
		if failed := client.CheckFailed(); len(failed) > 0 {
			return nil, nil, fail(ReasonPolicyCheck, joinUnique(failed))
		}
		if failures := client.Failures(); len(failures) > 0 {
			return nil, nil, fail(ReasonUnavailable, joinUnique(failures))
		}
		if denied := client.Denied(); len(denied) > 0 {
			return nil, nil, fail(ReasonNotGranted, joinUnique(denied))
		}
		if retired := client.Retired(); len(retired) > 0 {
			return nil, nil, fail(ReasonRetired, joinUnique(retired))
		}
		return nil, nil, fail(ReasonNoKey, describeKeys(m))
	}
	return dataKey, client.Used(), nil
}

// joinUnique joins the distinct messages of errs with "; ".
func joinUnique(errs []error) string {
	var out []string
	for _, e := range errs {
		if msg := e.Error(); !slices.Contains(out, msg) {
			out = append(out, msg)
		}
	}
	return strings.Join(out, "; ")
}

// stores holds the store of each document format.
var stores = map[Format]*store.Store{
	FormatYAML:   store.YAML,
	FormatJSON:   store.JSON,
	FormatBinary: store.Binary,
	FormatDotenv: store.Dotenv,
	FormatINI:    store.INI,
}

// maxItems returns the cap on the items of a document in format f.
func maxItems(f Format) int {
	if f == FormatINI {
		return MaxINIItems
	}
	return MaxDocumentItems
}

func countMasterKeys(m sops.Metadata) int {
	n := 0
	for _, g := range m.KeyGroups {
		n += len(g)
	}
	return n
}

// maxDescribedKeys caps how many of a document's master keys an error lists.
const maxDescribedKeys = 8

// maxIdentifier caps one key identifier in a message; an age post-quantum
// recipient is longer and is cut.
const maxIdentifier = 100

// describeKeys lists the master keys a document names, for the user: age
// recipients and PGP fingerprints (public values), other kinds by type only.
// The metadata is untrusted, so each entry is quoted and capped.
func describeKeys(m sops.Metadata) string {
	var parts []string
	total := 0
	for _, g := range m.KeyGroups {
		for _, k := range g {
			total++
			if len(parts) == maxDescribedKeys {
				continue
			}
			id := k.TypeToIdentifier()
			switch id {
			case "age", "pgp":
				parts = append(parts, id+" "+quote.Capped(k.ToString(), maxIdentifier))
			default:
				parts = append(parts, quote.Capped(id, maxIdentifier))
			}
		}
	}
	if total == 0 {
		return "the document lists no master keys"
	}
	if total > len(parts) {
		parts = append(parts, fmt.Sprintf("and %d more", total-len(parts)))
	}
	return "it is encrypted for: " + strings.Join(parts, ", ")
}
