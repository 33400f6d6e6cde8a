package mutate

// Public names of the product (docs/reference.md §1). They are API: keep them stable.
const (
	// LabelDecrypt on a namespace ("enabled") opts it in; on an object
	// ("disabled") opts the object out. Both are enforced by the
	// MutatingWebhookConfiguration's selectors, not by the handler.
	LabelDecrypt = "sops-webhook.io/decrypt"
	// AnnotationDecrypted lists the fields the webhook decrypted, comma
	// separated, e.g. "data.app.env,data.password".
	AnnotationDecrypted = "sops-webhook.io/decrypted"
	// AnnotationKeys lists the configured keys that were used.
	AnnotationKeys = "sops-webhook.io/keys"
	// AnnotationValues carries the metadata and path index of values
	// payloads (ENC[...] tokens from a Helm values file).
	AnnotationValues = "sops-webhook.io/values"
	// AnnotationExpand ("true") on an object turns each document payload
	// whose plaintext is a flat map into one key per entry.
	AnnotationExpand = "sops-webhook.io/expand"
	// AnnotationExpanded records, as JSON, the entries each expanded field
	// became ({"data.app.env":["DB_PASSWORD","DB_USER"]}), so an UPDATE
	// that expands the field again replaces them and drops stale ones.
	AnnotationExpanded = "sops-webhook.io/expanded"
	// AnnotationRewrap on a Secret asks, instead of decryption, for its SOPS
	// files with their data keys also wrapped for the current generation
	// of the key that opens them: "true", or RewrapDropRetired to also
	// remove the retired generations' recipients.
	AnnotationRewrap = "sops-webhook.io/rewrap"
	// RewrapDropRetired is the AnnotationRewrap value that also drops the
	// retired generations.
	RewrapDropRetired = "drop-retired"

	// HelmReleaseSecretType marks Helm's own release records, never touched.
	HelmReleaseSecretType = "helm.sh/release.v1"

	// auditDecrypted and auditKeys are the audit annotation keys; the API
	// server prefixes them with the webhook's name.
	auditDecrypted = "decrypted"
	auditKeys      = "keys"
	auditRewrapped = "rewrapped"
)
