package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

// freePort returns a free TCP port on 127.0.0.1.
func freePort() int {
	ports, err := testbed.FreePorts(1)
	if err != nil {
		panic(testbed.CommandFailure{Msg: err.Error()})
	}
	return ports[0]
}

// benchDoc is the dotenv document the CLI and in-process rates decrypt.
func benchDoc(tb *testbed.CommandTB, key sopskit.AgeKey) []byte {
	return sopskit.SopsEncrypt(tb, []byte("DB_USER=app\nDB_PASSWORD=bench-password\nAPI_KEY=bench-key\n"), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
}

// sopsCLIRate is documents per second for `sops decrypt`, one process per
// file, as helm-secrets runs it for every values file.
func sopsCLIRate(tb *testbed.CommandTB, key sopskit.AgeKey, quick bool) float64 {
	tools, _ := sopskit.Load()
	file := filepath.Join(tb.TempDir(), "app.enc.env")
	if err := os.WriteFile(file, benchDoc(tb, key), 0o600); err != nil {
		tb.Fatal(err)
	}
	n := 20
	if quick {
		n = 5
	}
	start := time.Now()
	for range n {
		cmd := exec.Command(tools.Sops, "decrypt", "--input-type", "dotenv", "--output-type", "dotenv", file)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tb.TempDir(), "SOPS_AGE_KEY_FILE=" + key.IdentityFile}
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("sops decrypt: %v: %s", err, out)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// inProcessRate is documents per second through decrypt.Document, in this
// process, with the data-key cache warm and, if documents, the document
// cache too (what the handler has after the first request).
func inProcessRate(tb *testbed.CommandTB, key sopskit.AgeKey, d time.Duration, documents bool) float64 {
	src, err := keysource.LoadAge("bench", key.IdentityFile)
	if err != nil {
		tb.Fatal(err)
	}
	ring, err := keysource.NewRingWith([]keysource.Source{src}, []keysource.RingOption{keysource.WithCache(1024, time.Hour, nil)})
	if err != nil {
		tb.Fatal(err)
	}
	var opts []decrypt.Option
	if documents {
		opts = append(opts, decrypt.WithResultCache(time.Hour, decrypt.DefaultResultCacheBytes))
	}
	dec := decrypt.New(ring, opts...)
	doc := benchDoc(tb, key)
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		if _, err := dec.Document(context.Background(), doc, decrypt.FormatDotenv, nil); err != nil {
			tb.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// kmsRun is 1,000 values payloads decrypted with AWS KMS.
type kmsRun struct {
	cache    bool
	calls    int64
	duration time.Duration
}

// kmsCalls counts remote KMS calls and wall time for 1,000 Secrets from one
// values file, with and without the data-key cache, against the AWS KMS
// stand-in through the real AWS SDK.
func kmsCalls(tb *testbed.CommandTB, work string, quick bool) ([]kmsRun, error) {
	aws, err := standin.StartAWS(tb.TempDir(), standin.AWSOptions{})
	if err != nil {
		return nil, err
	}
	defer aws.Close()
	for _, kv := range aws.AdminEnv() {
		k, v, _ := strings.Cut(kv, "=")
		tb.Cleanup(func() { os.Unsetenv(k) })
		os.Setenv(k, v)
	}
	arn := "arn:aws:kms:eu-west-1:111122223333:key/bench"
	enc := sopskit.SopsEncrypt(tb, []byte("db:\n  password: bench-values\n"), "yaml", sopskit.Recipients{KMS: []string{arn}, Env: aws.AdminEnv()})
	idx, err := decrypt.ParseIndex([]byte(sopskit.ValuesIndex(tb, enc)))
	if err != nil {
		return nil, err
	}
	token := []byte(sopskit.ValuesLeaves(tb, enc)[0].Value.(string))
	n := 1000
	if quick {
		n = 100
	}
	var out []kmsRun
	for _, cache := range []bool{false, true} {
		src, err := keysource.NewAWSKMS(context.Background(), "kms", keysource.AWSKMSConfig{ARN: "arn:aws:kms:eu-west-1:111122223333:key/*"})
		if err != nil {
			return nil, err
		}
		var opts []keysource.RingOption
		if cache {
			opts = append(opts, keysource.WithCache(keysource.DefaultCacheSize, keysource.DefaultCacheTTL, nil))
		}
		ring, err := keysource.NewRingWith([]keysource.Source{src}, opts)
		if err != nil {
			return nil, err
		}
		dec := decrypt.New(ring)
		before := aws.Decrypts.Load()
		start := time.Now()
		for range n {
			// One Tokens per Secret, as the handler makes one per request.
			if _, err := dec.Tokens(idx, nil).Decrypt(context.Background(), token); err != nil {
				return nil, err
			}
		}
		out = append(out, kmsRun{cache: cache, calls: aws.Decrypts.Load() - before, duration: time.Since(start)})
	}
	return out, nil
}

// helmRun is helm install timings.
type helmRun struct {
	secrets int
	// encrypted is with the webhook decrypting; noop the same encrypted
	// chart with the no-op webhook registered in its place, the floor any
	// webhook pays; noopPatch the same with the no-op that patches the same
	// fields, the floor any mutating webhook pays; plain is without a
	// webhook.
	encrypted, noop, noopPatch, plain time.Duration
	runs                              int
}

// helmInstall times `helm install` of a chart with 100 Secrets whose values
// come from an encrypted values file, into an opted-in namespace with the
// webhook; the same into a namespace where the no-op webhook at noopURL is
// registered instead, and where its patching twin at noopURL-patch is; and
// the chart with the plaintext values into a namespace no webhook sees.
func helmInstall(ctx context.Context, tb *testbed.CommandTB, work, bin, noopURL string, noopCA []byte, key sopskit.AgeKey, quick bool) (helmRun, error) {
	res := helmRun{secrets: 100, runs: 7}
	if quick {
		res.runs = 1
	}
	cp, err := testbed.StartControlPlane()
	if err != nil {
		return res, err
	}
	defer cp.Stop()
	kubeconfig := filepath.Join(work, "kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig); err != nil {
		return res, err
	}
	config := filepath.Join(work, "config.yaml")
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: filepath.Join(work, "helm-wh"), Args: []string{"--log-level", "error"}})
	if err != nil {
		return res, err
	}
	defer wh.Stop()
	if err := cp.RegisterWebhook(ctx, wh.URL, wh.CABundle); err != nil {
		return res, err
	}
	for _, ns := range []string{"enc", "noop", "noop-patch", "plain"} {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
		switch ns {
		case "enc":
			obj.Labels = map[string]string{mutate.LabelDecrypt: "enabled"}
		case "noop":
			obj.Labels = map[string]string{noopLabel: "enabled"}
		case "noop-patch":
			obj.Labels = map[string]string{noopPatchLabel: "enabled"}
		}
		if err := cp.Client.Create(ctx, obj); err != nil {
			return res, err
		}
	}
	if err := cp.WaitForWebhook(ctx, "enc"); err != nil {
		return res, err
	}
	// The no-ops in the webhook's place: the same registration, selecting
	// their own namespaces.
	for _, n := range []struct{ name, url, label string }{
		{"sops-webhook-noop", noopURL, noopLabel},
		{"sops-webhook-noop-patch", noopURL + "-patch", noopPatchLabel},
	} {
		mwc, err := testbed.LoadWebhookConfiguration(n.url, noopCA)
		if err != nil {
			return res, err
		}
		mwc.Name = n.name
		for i := range mwc.Webhooks {
			mwc.Webhooks[i].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{n.label: "enabled"}}
		}
		if err := cp.Client.Create(ctx, mwc); err != nil {
			return res, err
		}
	}
	// A registration takes effect asynchronously; the no-op cannot be seen
	// answering, so give it the time WaitForWebhook takes for the webhook.
	time.Sleep(2 * time.Second)

	chart := filepath.Join(work, "chart")
	root, _ := sopskit.RepoRoot()
	tpl, err := os.ReadFile(filepath.Join(root, "charts/sops-webhook-values/templates/_sops-webhook.tpl"))
	if err != nil {
		return res, err
	}
	_ = os.MkdirAll(filepath.Join(chart, "templates"), 0o755)
	files := map[string]string{
		"Chart.yaml":                  "apiVersion: v2\nname: bench\nversion: 0.1.0\n",
		"templates/_sops-webhook.tpl": string(tpl),
		"templates/secrets.yaml": `{{- range $i, $v := .Values.secrets }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ $.Release.Name }}-s-{{ $i }}
  annotations:
    {{- include "sops-webhook.values" $ | nindent 4 }}
stringData:
  password: {{ $v | quote }}
{{- end }}
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(chart, name), []byte(body), 0o644); err != nil {
			return res, err
		}
	}
	var plain strings.Builder
	plain.WriteString("secrets:\n")
	for i := range res.secrets {
		fmt.Fprintf(&plain, "  - bench-secret-%03d\n", i)
	}
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	encFile := filepath.Join(work, "values.enc.yaml")
	plainFile := filepath.Join(work, "values.yaml")
	if err := os.WriteFile(encFile, sopskit.SopsEncrypt(tb, []byte(plain.String()), "yaml", r), 0o600); err != nil {
		return res, err
	}
	if err := os.WriteFile(plainFile, []byte(plain.String()), 0o600); err != nil {
		return res, err
	}
	h := testbed.HelmCLIs(tb, kubeconfig)[0]
	timeInstall := func(ns, values string, i int) (time.Duration, error) {
		start := time.Now()
		_, err := h.Run("install", fmt.Sprintf("r%d", i), chart, "-n", ns, "-f", values)
		return time.Since(start), err
	}
	var enc, noop, noopPatch, pl []time.Duration
	installs := []struct {
		ns, values string
		into       *[]time.Duration
	}{{"enc", encFile, &enc}, {"noop", encFile, &noop}, {"noop-patch", encFile, &noopPatch}, {"plain", plainFile, &pl}}
	for i := range res.runs {
		// Each run starts with another of the three, so none is always
		// the first after a pause.
		for k := range installs {
			c := installs[(i+k)%len(installs)]
			d, err := timeInstall(c.ns, c.values, i)
			if err != nil {
				return res, err
			}
			*c.into = append(*c.into, d)
		}
	}
	// Spot check: the webhook decrypted what it was sent.
	got := &corev1.Secret{}
	if err := cp.Client.Get(ctx, clientKey("enc", "r0-s-7"), got); err != nil || string(got.Data["password"]) != "bench-secret-007" {
		return res, fmt.Errorf("helm bench: r0-s-7 was not decrypted: %v", err)
	}
	if err := cp.Client.Get(ctx, clientKey("noop-patch", "r0-s-7"), got); err != nil || got.Annotations["bench.sops-webhook.io/patched"] != "true" {
		return res, fmt.Errorf("helm bench: the patching no-op did not patch r0-s-7: %v", err)
	}
	res.encrypted, res.noop, res.noopPatch, res.plain = median(enc), median(noop), median(noopPatch), median(pl)
	return res, nil
}

// noopLabel and noopPatchLabel opt a namespace in to the no-op webhook
// and to the no-op that patches.
const (
	noopLabel      = "bench.sops-webhook.io/noop"
	noopPatchLabel = "bench.sops-webhook.io/noop-patch"
)

// median is the median of xs, which is not empty; of an even count, the
// mean of the middle two.
func median[T time.Duration | float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[n/2]
}

// goBenchmarks runs the Go benchmarks of packages decrypt, mutate and
// clusterkeys and returns their result lines.
func goBenchmarks(root string, quick bool) []string {
	benchtime := "300ms"
	if quick {
		benchtime = "20ms"
	}
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", benchtime, "./pkg/decrypt/", "./pkg/mutate/", "./pkg/clusterkeys/")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "Benchmark") {
			lines = append(lines, sc.Text())
		}
	}
	if err != nil {
		lines = append(lines, "go test -bench failed: "+err.Error())
	}
	return lines
}

func clientKey(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }
