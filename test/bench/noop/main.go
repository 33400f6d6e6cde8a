// Command noop is the benchmarks' baseline: an admission webhook on the same
// controller-runtime webhook server and TLS settings as sops-webhook, whose
// handler allows every request without looking at it: what a webhook built
// on controller-runtime's admission package pays for a request, its review
// read by that package's decoder (sops-webhook reads reviews with its own).
// /mutate-patch is the floor of a
// mutating webhook instead: it answers each Secret with a patch that sets
// every data and stringData key to the value it already has, so the API
// server applies a patch of the same fields a decrypting webhook patches.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"gomodules.xyz/jsonpatch/v2"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/callerauth"
)

func main() {
	certDir := flag.String("cert-dir", "", "folder with tls.crt and tls.key")
	host := flag.String("host", "127.0.0.1", "listen address")
	port := flag.Int("port", 9443, "HTTPS port")
	health := flag.String("health-probe-bind-address", "", "address of /readyz")
	clientCA := flag.String("client-ca-file", "", "require client certificates from this CA, as cmd/webhook does")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The TLS settings of cmd/webhook (hardenTLS, callerauth).
	opts := []func(*tls.Config){func(c *tls.Config) { c.MinVersion = tls.VersionTLS12; c.NextProtos = []string{"http/1.1"} }}
	if *clientCA != "" {
		v, err := callerauth.New(*clientCA, []string{"kube-apiserver"}, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, "noop:", err)
			os.Exit(1)
		}
		opts = append(opts, v.Configure)
	}
	srv := webhook.NewServer(webhook.Options{Host: *host, Port: *port, CertDir: *certDir, TLSOpts: opts})
	srv.Register("/mutate", &webhook.Admission{Handler: admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		return admission.Allowed("")
	})})
	srv.Register("/mutate-patch", &webhook.Admission{Handler: admission.HandlerFunc(patchSameValues)})
	if *health != "" {
		go func() {
			_ = http.ListenAndServe(*health, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }))
		}()
	}
	if err := srv.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "noop:", err)
		os.Exit(1)
	}
}

// patchSameValues allows a Secret with a patch that replaces each of its
// data and stringData values by itself, and marks it with
// PatchedAnnotation so that a benchmark can see the patch was applied.
func patchSameValues(_ context.Context, req admission.Request) admission.Response {
	var s struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Data       map[string]string `json:"data"`
		StringData map[string]string `json:"stringData"`
	}
	if err := json.Unmarshal(req.Object.Raw, &s); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	var ops []jsonpatch.JsonPatchOperation
	for field, values := range map[string]map[string]string{"data": s.Data, "stringData": s.StringData} {
		for k, v := range values {
			ops = append(ops, jsonpatch.NewOperation("replace", "/"+field+"/"+escape(k), v))
		}
	}
	if s.Metadata.Annotations == nil {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations", map[string]string{patchedAnnotation: "true"}))
	} else {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations/"+escape(patchedAnnotation), "true"))
	}
	return admission.Patched("", ops...)
}

// patchedAnnotation marks what /mutate-patch patched.
const patchedAnnotation = "bench.sops-webhook.io/patched"

// escape makes a key a JSON pointer segment.
func escape(k string) string {
	return strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
}
