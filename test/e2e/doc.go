// Package e2e proves the webhook through a real kube-apiserver: envtest
// starts it and etcd from the test bed, the real webhook binary serves TLS on
// loopback, and the project's own MutatingWebhookConfiguration routes
// Secrets and ConfigMaps to it. Skipped with -short.
package e2e
