// Package policy decides which configured keys a request may use: the
// config's policy rules grant keys to namespaces (names, globs or a label
// selector) and kinds, and may also require the requesting user to hold the
// RBAC verb "use" on keys.sops-webhook.io/<key name> in the namespace,
// checked with a SubjectAccessReview. RBAC stays the policy engine.
//
// A Policy hands package decrypt a keysource.Access per request; decrypt asks
// it before any key is used, so a key that is not granted is never tried,
// never read from the data-key cache and never contacted. Refusals wrap
// keysource.ErrNotGranted and name the key, the kind, the namespace and the
// user; never a value. A namespace lookup or SubjectAccessReview that fails
// wraps keysource.ErrCheckFailed instead: no decision was made, and the
// request can be retried.
package policy
