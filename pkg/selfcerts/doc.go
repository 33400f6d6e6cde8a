// Package selfcerts is the webhook's self-managed certificate mode, for
// clusters without cert-manager. Each replica runs a Manager that keeps a CA
// and a serving certificate in one Secret of the webhook's namespace, puts
// the CA in the MutatingWebhookConfiguration's caBundle, and writes the
// certificate files the webhook server watches.
//
// Rotation never leaves the API server unable to verify a replica: a new CA
// is added to the caBundle (next to the old one) before any certificate it
// signs is issued, and old CAs leave the caBundle only when they expire.
// Replicas agree through the Secret: writes carry its resourceVersion, and a
// replica that loses a race re-reads the Secret on its next pass.
//
// Errors name the Secret or the webhook configuration and wrap the API
// error; keys and certificates never appear in them or in logs.
package selfcerts
