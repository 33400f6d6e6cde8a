// Package decrypt finds SOPS payloads in byte values and decrypts them
// in-process with the webhook's configured keys. It knows nothing of
// Kubernetes: callers hand it a value and, as a hint, the name the value is
// stored under.
//
// Detection looks for marker bytes first (Detect), so a value without a SOPS
// marker costs a substring search and nothing more. A document is then parsed
// by sops' own store for its format, its data key is unwrapped through
// keysource (never through sops' default key service), every value is
// decrypted with a fresh sops AES cipher, and the document's MAC is compared
// in constant time. The output is what `sops decrypt` prints for the same file.
//
// Every error returned by this package is an *Error: a fixed reason and a
// hint, written by us. sops' own error strings are never passed on, because
// some of them quote values or the expected MAC.
package decrypt
