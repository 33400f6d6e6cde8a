// Package node runs the test bed's real kubelet node: a kubelet, a
// container runtime and kube-router's network policy controller beside the
// embedded control plane, with pods in network namespaces it creates. Test
// traffic stays on loopback and the node's own bridge.
package node
