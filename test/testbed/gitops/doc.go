// Package gitops plays the GitOps tools the webhook is proven with: Flux's
// real kustomize-controller with a source-controller stand-in, and Argo
// CD's comparison (gitops-engine's diff with its normalizers) emulated for
// one Application.
package gitops
