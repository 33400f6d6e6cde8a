// Package sopskit is the part of the test bed that needs no Kubernetes: the
// test bed's tool paths (Load, Need), age and PGP test keys, the sops CLI
// (SopsEncrypt, SopsDecrypt), values-index and plaintext builders. It is
// apart from package testbed so that the tests and fuzz targets of
// pkg/decrypt and pkg/mutate build without the API server's client
// libraries, which a fuzz build would otherwise compile again with coverage
// instrumentation.
package sopskit
