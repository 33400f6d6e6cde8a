package mutate

import (
	"bytes"
	"strings"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
)

// screen is what a look at raw bytes found before anything is decoded.
type screen struct {
	// sops: a SOPS marker, in plain text or base64. False means the bytes
	// certainly hold no SOPS content.
	sops bool
	// provenance: the annotations only the webhook writes are named, so
	// the object's record must be checked even without SOPS content.
	provenance bool
}

// decode reports whether the object must be decoded.
func (s screen) decode() bool { return s.sops || s.provenance }

// screenBytes screens raw, an object or a whole review, for a SOPS marker
// in plain text (as in ConfigMap data and a values index) and, when
// withBase64, in base64 (as in Secret data and ConfigMap binaryData), and
// for the provenance annotations. It is the one screen of both entry
// points: Server.ServeHTTP screens the whole body, Handler.Handle the
// object.
func screenBytes(raw []byte, withBase64 bool) screen {
	return screen{
		sops:       decrypt.HasMarker(raw) || withBase64 && decrypt.MayHoldBase64Marker(raw),
		provenance: mentionsProvenance(raw),
	}
}

// mayHoldBase64 reports whether an object can carry base64 values: every
// Secret, and a ConfigMap only with binaryData. It spares a ConfigMap of
// text the base64 marker scans.
func mayHoldBase64(kind string, raw []byte) bool {
	return kind == "Secret" || bytes.Contains(raw, binaryDataKey)
}

// binaryDataKey is how a ConfigMap's base64 section appears in its JSON.
var binaryDataKey = []byte(`"binaryData"`)

// mentionsProvenance reports whether raw may carry the annotations only
// the webhook writes: whether it holds their names' ends, from "webhook.io/",
// and the quote that closes a JSON key. A name that merely ends the same
// way costs a decode that finds no record, never a missed one. The patterns
// start where JSON is sparse: bytes.Index gives up on its fast search
// after a false start every eight bytes, which a leading quote meets in
// the first line of any review, leaving the rest of a large body to a
// search several times slower.
func mentionsProvenance(raw []byte) bool {
	return bytes.Contains(raw, decryptedEnd) || bytes.Contains(raw, keysEnd)
}

// The ends of AnnotationDecrypted and AnnotationKeys as JSON keys.
var (
	decryptedEnd = []byte(AnnotationDecrypted[strings.Index(AnnotationDecrypted, "webhook.io/"):] + `"`)
	keysEnd      = []byte(AnnotationKeys[strings.Index(AnnotationKeys, "webhook.io/"):] + `"`)
)
