// Package chart tests the Helm helper chart (charts/sops-webhook-values) with
// the real helm v3 and v4 CLIs and the real sops CLI: what it renders, that
// the webhook's decryptor opens every token with it, and how large it gets.
// It needs no cluster, so it runs in the quick loop (go test -short).
package chart
