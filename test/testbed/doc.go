// Package testbed gives tests the real parts of the test bed (docs/design-notes.md, "Test bed"):
// the sops, helm and age-keygen binaries and the kube-apiserver and etcd
// assets that install.sh builds into the git-ignored cache, plus helpers that
// generate keys and encrypt documents with the real sops CLI.
//
// Tools are located through $TESTBED_CACHE/env (default
// <repo>/.cache/testbed/env). A test that needs a missing tool fails with the
// command that installs it; it never skips silently.
package testbed
