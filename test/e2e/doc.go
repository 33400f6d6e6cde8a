// Package e2e proves the webhook through a real kube-apiserver: envtest
// starts it and etcd from the test bed, the real webhook binary serves TLS on
// loopback, and the project's own MutatingWebhookConfiguration routes
// Secrets and ConfigMaps to it. Besides, TestFlood runs the binary in a
// memory cgroup at the Deployment's limit under a tenant's flood,
// TestGateOverTLS checks the body budget's refusals over TLS,
// TestGateRefusalsThroughAPIServer that they reach clients as the
// webhook's retryable 503, and
// TestGitOps applies and diffs rendered manifests as kubectl, Argo CD (its
// server-side diff emulated) and a real Flux kustomize-controller do.
// TestRealPods installs the manifests and the chart as real pods on the
// test bed's node (kubelet, containerd, kube-proxy). Skipped with -short.
package e2e
