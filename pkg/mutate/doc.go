// Package mutate is the admission side of the webhook: Kubernetes Secrets and
// ConfigMaps in, JSON patches out.
//
// A review takes one path, in this order of files:
//
//   - serve.go: Server.ServeHTTP reads the body within the Gate (gate.go:
//     lanes, deadline, handling slots), screens it once (screen.go: SOPS
//     markers, the provenance record) and hands the body to the Handler;
//   - handler.go: serveReview decodes the review once (decode.go), with
//     its object only when the screen found something, and handle skips
//     early, then mutates the object and answers;
//   - mutate.go: the object's SOPS documents and values payloads (fields.go
//     says where they are in a Secret or ConfigMap) are decrypted through
//     package decrypt, flat documents expanded when
//     sops-webhook.io/expand asks (expand.go), and the JSON patch built:
//     exactly the decrypted fields, the provenance record in
//     sops-webhook.io/decrypted and sops-webhook.io/keys, and the removal of
//     the sops-webhook.io/values index;
//   - refusal.go: why a request is refused, as an answer.
//
// Handler.Handle is the same flow for controller-runtime's admission
// server, with the same screen.
//
// A payload that cannot be decrypted refuses the whole request, so nothing
// is stored half-decrypted: Denied (403) when the request is at fault, a
// retryable error response (503, or 500) when the webhook or a key service
// is (the table is decrypt's, docs/reference.md §6).
package mutate
