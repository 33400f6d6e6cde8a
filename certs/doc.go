// Package certs is the small PKI the webhook's self-managed mode (package
// selfcerts) runs on: a CA (NewCA, ParseCA), the serving and client
// certificates it issues (Issue, IssueClient), and a writer for tls.crt,
// tls.key and ca.crt, the names --cert-dir expects (Bundle.WriteDir). In a
// cluster with cert-manager, cert-manager does this. The test bed issues its
// certificates with cert-manager's PKI library instead (docs/design-notes.md
// says why).
package certs
