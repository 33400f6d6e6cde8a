// Package certs issues what a developer needs for local TLS: a throwaway CA
// and a serving certificate it signs, written as tls.crt, tls.key and ca.crt,
// the names the webhook's --cert-dir expects. Tests and `make demo` use it;
// in a cluster, cert-manager (or the webhook's self-managed mode) does this.
package certs
