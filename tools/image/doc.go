// Command image writes the webhook's container image as a docker archive,
// without a container engine, for machines (and air-gapped installs) that
// have none: `make image` runs it when neither docker nor podman has an
// engine to talk to.
//
// The image is the Dockerfile's runtime stage rebuilt from an empty base
// with go-containerregistry: one layer holding the static binary built by
// `make build` (the Dockerfile's build command), a CA bundle so cloud SDKs
// can verify TLS, and the passwd and group entries of the non-root user; the
// user and entrypoint are read from the Dockerfile's last stage, so the two
// cannot drift. There is no shell. File times are fixed, so the same inputs
// give the same digest.
//
//	go run ./tools/image -binary bin/webhook -out bin/sops-webhook-image.tar
//	ctr -n k8s.io images import bin/sops-webhook-image.tar   # or: docker load -i …
package main
