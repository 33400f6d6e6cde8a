package decrypt

import "errors"

// Reason is a fixed, value-free description of why a payload was refused.
type Reason string

// The reasons an *Error carries. Each has one row in the reasons table below;
// docs/reference.md lists the same table.
const (
	ReasonTooLarge    Reason = "payload is too large"
	ReasonMalformed   Reason = "not a valid SOPS document"
	ReasonNoKey       Reason = "no configured key can open it"
	ReasonNotGranted  Reason = "the key that opens it is not granted here"
	ReasonCorrupt     Reason = "a value failed authentication (tampered, or encrypted with another data key)"
	ReasonMAC         Reason = "MAC mismatch: the document was modified after it was encrypted"
	ReasonNoMAC       Reason = "the document carries no usable MAC"
	ReasonUnsupported Reason = "unsupported SOPS content"
	ReasonNoIndex     Reason = "ENC[...] tokens without SOPS metadata"
	ReasonNotIndexed  Reason = "an ENC[...] token is missing from the values index"
	ReasonBadIndex    Reason = "the values index is unusable"
	ReasonTooMuchWork Reason = "its keys ask more unwraps than one request may start"
	ReasonRetired     Reason = "it is encrypted only for a retired generation of a key"

	ReasonUnavailable Reason = "the key that opens it could not be used"
	ReasonPolicyCheck Reason = "the policy could not be checked"
	ReasonTimeout     Reason = "decryption did not finish in time"
	ReasonInternal    Reason = "internal error while decrypting"
)

// reasonInfo is a Reason's row in the table: its metric label and whose
// fault it is.
type reasonInfo struct {
	// label is the stable snake_case outcome label of
	// sops_webhook_decryptions_total.
	label string
	// retryable is true when the webhook or a dependency failed, not the
	// request: the same request can succeed later.
	retryable bool
}

// reasons is the one table of error classes. A request's fault is refused
// for good (the API server answers 403); a retryable failure is the
// webhook's or a key service's (5xx, worded as retryable).
var reasons = map[Reason]reasonInfo{
	ReasonTooLarge:    {label: "too_large"},
	ReasonMalformed:   {label: "malformed"},
	ReasonNoKey:       {label: "no_key"},
	ReasonNotGranted:  {label: "not_granted"},
	ReasonCorrupt:     {label: "corrupt"},
	ReasonMAC:         {label: "mac_mismatch"},
	ReasonNoMAC:       {label: "no_mac"},
	ReasonUnsupported: {label: "unsupported"},
	ReasonNoIndex:     {label: "no_index"},
	ReasonNotIndexed:  {label: "not_indexed"},
	ReasonBadIndex:    {label: "bad_index"},
	ReasonTooMuchWork: {label: "too_many_unwraps"},
	ReasonRetired:     {label: "retired_generation"},

	ReasonUnavailable: {label: "key_unavailable", retryable: true},
	ReasonPolicyCheck: {label: "policy_check_failed", retryable: true},
	ReasonTimeout:     {label: "timeout", retryable: true},
	ReasonInternal:    {label: "internal", retryable: true},
}

// SuccessLabel is the outcome label of a payload that was decrypted.
const SuccessLabel = "success"

// Label returns the reason's metric label: stable, snake_case, one per
// reason. An unknown reason is labelled like ReasonInternal.
func (r Reason) Label() string {
	if i, ok := reasons[r]; ok {
		return i.label
	}
	return reasons[ReasonInternal].label
}

// Retryable reports whether the failure is the webhook's or a dependency's
// rather than the request's, so the same request can succeed later. An
// unknown reason is retryable, like ReasonInternal.
func (r Reason) Retryable() bool {
	if i, ok := reasons[r]; ok {
		return i.retryable
	}
	return true
}

// Reasons returns every reason in the table, for metrics and docs.
func Reasons() []Reason {
	out := make([]Reason, 0, len(reasons))
	for r := range reasons {
		out = append(out, r)
	}
	return out
}

// Error is the only error type this package returns. Its text is built from a
// Reason and public facts we chose (format, key types, recipients, limits),
// never from a value, a key, a data key or a MAC. What a user should do
// about it is the caller's to say, in the caller's terms.
type Error struct {
	Reason Reason
	// Detail says what about the payload made it fail; it may be empty.
	Detail string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return string(e.Reason)
	}
	return string(e.Reason) + "; " + e.Detail
}

// ReasonOf returns the Reason of err: "" for nil, the *Error's reason, or
// ReasonInternal for any other error.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInternal
}

// IsReason reports whether err is an *Error with reason r.
func IsReason(err error, r Reason) bool {
	var e *Error
	return errors.As(err, &e) && e.Reason == r
}

func fail(r Reason, detail string) *Error {
	return &Error{Reason: r, Detail: detail}
}
