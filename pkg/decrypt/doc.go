// Package decrypt finds SOPS payloads in byte values and decrypts them
// in-process with the webhook's configured keys. It knows nothing of
// Kubernetes: callers hand it a value and, as a hint, the name the value is
// stored under.
//
// Detection looks for marker bytes first (Detect), so a value without a SOPS
// marker costs a substring search and nothing more. A document is then
// capped by its structure (Items, which callers also weigh it by), loaded by
// the store of its format (package store: sops' own stores where they hold
// up, ours where sops' were measured to be quadratic or unbounded), its data
// key unwrapped through keysource (never through sops' default key
// service), its values decrypted with one AES-GCM per document, and its MAC
// compared in constant time. The output is what `sops decrypt` prints for
// the same file. Result.Entries splits a flat document into its entries.
//
// Values payloads are ENC[...] tokens from a SOPS-encrypted Helm values file,
// without the file around them. ParseIndex reads the index the chart helper
// renders (the file's metadata and each token's values path); Tokens then
// unwraps the data key once and replaces every token in a value by its plain
// text, authenticated with its path, rendered as Helm renders the plain value.
//
// Every error returned by this package is an *Error: a fixed reason and a
// detail, written by us. Each Reason has a metric label and a class in one
// table (errors.go): the request's fault, or retryable. sops' own error
// strings are never passed on, because some of them quote values or the
// expected MAC. What a user should do about a Reason is the caller's to
// say, in its own terms (package mutate's hints).
//
// A program that decrypts untrusted documents calls DiscardLibraryLogs once
// at startup: sops' own loggers can print a value.
package decrypt
