// Package testpki issues the test bed's certificates the way cert-manager's
// CA issuer does, through cert-manager's PKI library: serving certificates
// for the webhook under test and the stand-ins, and client certificates.
package testpki
