// Package mutate is the admission side of the webhook: Kubernetes Secrets and
// ConfigMaps in, JSON patches out.
//
// Handler screens each request's raw object for SOPS marker bytes before it
// decodes anything, so objects without SOPS content are allowed unpatched at
// the cost of a substring search. For the others it decrypts every SOPS
// document and every values payload (with the sops-webhook.io/values index,
// which it removes) through package decrypt, expands flat documents when
// sops-webhook.io/expand asks for it, and answers with a JSON patch that
// replaces exactly the decrypted fields and records what it did in the
// sops-webhook.io/decrypted and sops-webhook.io/keys annotations, the same
// facts as audit annotations, and a warning where plaintext lands in a
// ConfigMap. A payload that cannot be decrypted refuses the whole request,
// so nothing is stored half-decrypted: Denied (403) when the request is at
// fault, a retryable error response (503, or 500) when the webhook or a key
// service is (deny.go; the table is decrypt's, docs/reference.md §6).
package mutate
