// Package certs issues what a developer needs for local TLS: a CA, serving
// certificates it signs, and a writer for tls.crt, tls.key and ca.crt, the
// names the webhook's --cert-dir expects. Tests and `make demo` use
// NewServing; the webhook's self-managed mode (package selfcerts) uses NewCA,
// ParseCA and Issue. In a cluster with cert-manager, cert-manager does this.
package certs
