// Package standin holds the test bed's stand-ins for the key services that
// cannot run here: AWS KMS, Azure Key Vault, Google Cloud KMS and Vault's
// transit engine. Each is a local HTTPS (or gRPC) server on loopback that
// speaks the service's wire protocol, driven by the real SDK the webhook
// uses, with its own keys and the identity checks the real service makes
// (workload tokens verified against the API server's issuer). It needs no
// cluster, so the key-source unit tests link it without the rest of the
// test bed.
package standin
