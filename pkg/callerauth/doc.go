// Package callerauth decides who may ask the webhook for plaintext: only a
// TLS client whose certificate a configured CA signed for client
// authentication, optionally with one of a set of allowed names. The API
// server presents such a certificate when its AdmissionConfiguration gives
// it a kubeconfig for this webhook (docs/operations.md, "Security model").
//
// A Verifier checks the certificate during the TLS handshake, so a caller
// it refuses never gets to send a request: the handshake fails and no
// AdmissionReview is read or answered. The CA file is re-read by Reload,
// so the client CA can rotate without a restart.
//
// Errors name the file or the refused certificate's subject and the
// reason; they never hold key material.
package callerauth
