// Package testbed gives tests the real parts of the test bed: the embedded
// control plane (kube-apiserver, etcd, controller-manager), the webhook
// binary run as the Deployment runs it (in its memory cgroup, with the API
// server's client certificate), Helm, the cert-manager stand-in and the
// Service proxy. The tools come from the git-ignored cache that install.sh
// builds; a test that needs a missing tool fails with the command that
// installs it, and never skips silently.
//
// The other concerns have packages of their own, beside this one:
//
//   - sopskit: keys, the sops CLI and document builders (no Kubernetes);
//   - testpki: certificates;
//   - standin: the key-service stand-ins (AWS, Azure, GCP, Vault);
//   - node: the real kubelet node and network namespaces;
//   - gitops: Flux and Argo CD;
//   - flood: floods, victims and their tallies.
package testbed
