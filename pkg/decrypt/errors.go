package decrypt

import "errors"

// Reason is a fixed, value-free description of why a payload was refused.
type Reason string

// The reasons an *Error carries.
const (
	ReasonTooLarge    Reason = "payload is too large"
	ReasonMalformed   Reason = "not a valid SOPS document"
	ReasonNoKey       Reason = "no configured key can open it"
	ReasonNotGranted  Reason = "the key that opens it is not granted here"
	ReasonUnavailable Reason = "the key that opens it could not be used"
	ReasonCorrupt     Reason = "a value failed authentication (tampered, or encrypted with another data key)"
	ReasonMAC         Reason = "MAC mismatch: the document was modified after it was encrypted"
	ReasonNoMAC       Reason = "the document carries no usable MAC"
	ReasonUnsupported Reason = "unsupported SOPS content"
	ReasonNoIndex     Reason = "ENC[...] tokens without SOPS metadata"
	ReasonNotIndexed  Reason = "an ENC[...] token is missing from the values index"
	ReasonBadIndex    Reason = "the sops-webhook.io/values index is unusable"
	ReasonTimeout     Reason = "decryption did not finish in time"
	ReasonInternal    Reason = "internal error while decrypting"
)

// Error is the only error type this package returns. Its text is built from a
// Reason, a hint and public facts we chose (format, key types, recipients),
// never from a value, a key, a data key or a MAC.
type Error struct {
	Reason Reason
	// Hint tells the user what to do about it; it may be empty.
	Hint string
}

func (e *Error) Error() string {
	if e.Hint == "" {
		return string(e.Reason)
	}
	return string(e.Reason) + "; " + e.Hint
}

// IsReason reports whether err is an *Error with reason r.
func IsReason(err error, r Reason) bool {
	var e *Error
	return errors.As(err, &e) && e.Reason == r
}

func fail(r Reason, hint string) *Error {
	return &Error{Reason: r, Hint: hint}
}
