package decrypt

import (
	"bytes"
	"encoding/base64"
	"path"
	"strings"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/internal/token"
)

// Format is the kind of SOPS payload a value holds.
type Format string

// The formats Detect reports.
const (
	// FormatNone is a value with no SOPS marker. It is never parsed.
	FormatNone Format = ""
	FormatYAML Format = "yaml"
	FormatJSON Format = "json"
	// FormatBinary is sops' binary form: a JSON document whose only value,
	// "data", holds the raw file. It decrypts to the raw bytes.
	FormatBinary Format = "binary"
	FormatDotenv Format = "dotenv"
	FormatINI    Format = "ini"
	// FormatTokens is a value that holds ENC[...] tokens but no SOPS
	// metadata: a values payload (a rendered values file), not a document.
	FormatTokens Format = "tokens"
)

// IsDocument reports whether f is one of the five SOPS document formats.
func (f Format) IsDocument() bool {
	switch f {
	case FormatYAML, FormatJSON, FormatBinary, FormatDotenv, FormatINI:
		return true
	}
	return false
}

// base64Markers are token.Marker as it appears inside base64 text at each of
// the three byte alignments, so a base64 blob can be screened without
// decoding it.
var base64Markers = func() [3][]byte {
	var out [3][]byte
	for i := range 3 {
		m := token.Marker[i:]
		m = m[:len(m)/3*3]
		out[i] = []byte(base64.StdEncoding.EncodeToString(m))
	}
	return out
}()

// HasMarker reports whether value holds a SOPS marker. It is the cheap first
// test: a value for which it is false is never parsed.
func HasMarker(value []byte) bool {
	return bytes.Contains(value, token.Marker)
}

// MayHoldBase64Marker reports whether text may hold the base64 encoding of a
// value with a SOPS marker. False means it certainly does not; true means it
// is worth decoding. Kubernetes Secret objects carry their values this way.
func MayHoldBase64Marker(text []byte) bool {
	for _, m := range base64Markers {
		if bytes.Contains(text, m) {
			return true
		}
	}
	return false
}

// Detect classifies value by its marker bytes and the shape of its SOPS
// metadata, without decrypting or fully parsing it. name is where the value
// is stored (a file name such as "app.env" or "config.json"); it only settles
// the one case the bytes cannot: a JSON document whose sole value is "data"
// is JSON when name ends in .json and binary otherwise, as sops decides by
// file extension.
func Detect(value []byte, name string) Format {
	if !HasMarker(value) {
		return FormatNone
	}
	body := bytes.TrimLeft(value, "\ufeff \t\r\n")
	switch {
	case len(body) > 0 && body[0] == '{' && bytes.Contains(body, []byte(`"sops"`)):
		if isBinaryEnvelope(body) && !strings.EqualFold(path.Ext(name), ".json") {
			return FormatBinary
		}
		return FormatJSON
	case hasLine(body, "[sops]"):
		return FormatINI
	case hasLinePrefix(body, "sops_mac="), hasLinePrefix(body, "sops_version="):
		return FormatDotenv
	case hasLinePrefix(body, "sops:"):
		return FormatYAML
	}
	return FormatTokens
}

// isBinaryEnvelope reports whether a JSON document has exactly the two
// top-level keys sops' binary store writes: "data" and "sops". It counts
// keys at depth one without a full parse.
func isBinaryEnvelope(doc []byte) bool {
	depth, keys := 0, 0
	var sawData bool
	inString, escaped := false, false
	start := 0
	for i, c := range doc {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
				if depth == 1 && isKeyPosition(doc[i+1:]) {
					keys++
					if string(doc[start:i]) == "data" {
						sawData = true
					}
				}
			}
			continue
		}
		switch c {
		case '"':
			inString, start = true, i+1
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		}
	}
	return keys == 2 && sawData
}

// isKeyPosition reports whether rest, the bytes after a closing quote, start
// with optional space and a colon: the string was an object key.
func isKeyPosition(rest []byte) bool {
	rest = bytes.TrimLeft(rest, " \t\r\n")
	return len(rest) > 0 && rest[0] == ':'
}

func hasLinePrefix(body []byte, prefix string) bool {
	for line := range bytes.Lines(body) {
		if bytes.HasPrefix(line, []byte(prefix)) {
			return true
		}
	}
	return false
}

func hasLine(body []byte, want string) bool {
	for line := range bytes.Lines(body) {
		if string(bytes.TrimSpace(line)) == want {
			return true
		}
	}
	return false
}
