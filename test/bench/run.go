package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// report is everything measured.
type report struct {
	started   time.Time
	points    []point
	sopsCLI   float64 // documents per second, one process per file
	inProcess float64 // documents per second, in-process, warm caches
	// inProcessDataKey is the same with only the data-key cache.
	inProcessDataKey float64
	kms              []kmsRun
	rssBase          int64
	rssPeak          int64
	goroutines       [2]int // before and peak under load
	helm             helmRun
	cold             []coldRow
	flood            []floodRun
	// handshake compares the no-op with and without client certificates.
	handshake []ratio
	goBench   []string
	env       string
}

// step prints a line of progress.
var step = testbed.Progress("bench")

func run(ctx context.Context, out string, d time.Duration, quick bool) (err error) {
	work, err := os.MkdirTemp("", "sops-webhook-bench-")
	if err != nil {
		return err
	}
	tb := testbed.NewCommandTB(work)
	defer func() { _ = os.RemoveAll(work) }()
	defer tb.Close()
	defer testbed.Recover(&err)
	rep := &report{started: time.Now(), env: machine()}
	concurrency := []int{1, 16}
	if quick {
		d = time.Second
	}

	step("building the webhook and the no-op baseline")
	bin, err := testbed.BuildWebhook(work)
	if err != nil {
		return err
	}
	noop := filepath.Join(work, "noop")
	root, _ := sopskit.RepoRoot()
	if b, err := exec.Command("go", "build", "-o", noop, filepath.Join(root, "test/bench/noop")).CombinedOutput(); err != nil {
		return fmt.Errorf("build noop: %v: %s", err, b)
	}

	key := sopskit.NewAgeKey(tb, false)
	config := filepath.Join(work, "config.yaml")
	if err := os.WriteFile(config, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: bench\n    age: {identityFile: "+key.IdentityFile+"}\n"), 0o600); err != nil {
		return err
	}
	bundle, err := testpki.NewTLS([]string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return err
	}
	step("starting both servers on loopback TLS")
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: filepath.Join(work, "wh"), Certs: bundle, Args: []string{"--log-level", "error"}})
	if err != nil {
		return err
	}
	defer wh.Stop()
	noopDir := filepath.Join(work, "noop-certs")
	_ = os.MkdirAll(noopDir, 0o700)
	if err := bundle.WriteDir(noopDir); err != nil {
		return err
	}
	noopPort, noopHealth := freePort(), freePort()
	id, err := testbed.LoadAPIServerClient()
	if err != nil {
		return err
	}
	np, err := startProcess(noop, []string{"--cert-dir", noopDir, "--client-ca-file", id.CAFile, "--port", strconv.Itoa(noopPort), "--health-probe-bind-address", "127.0.0.1:" + strconv.Itoa(noopHealth)},
		"http://127.0.0.1:"+strconv.Itoa(noopHealth)+"/readyz")
	if err != nil {
		return err
	}
	defer np.stop()
	noopURL := fmt.Sprintf("https://127.0.0.1:%d/mutate", noopPort)

	scen := scenarios(tb, key)
	rep.rssBase, _ = testbed.ProcessMemory(wh.PID())
	rep.goroutines[0] = goroutines(wh.MetricsURL)
	stopSampling := sampleMemory(wh, rep)
	// Each load point is measured in rounds; each round's pair gives a
	// ratio, and the report takes their median (ratio.median), so that
	// drift on a shared machine falls on both servers. At concurrency 16
	// a round runs one server and then the other, the first taking turns;
	// at concurrency 1 one client sends to both in turn (alternate).
	rounds := 6
	if quick {
		rounds = 2
	}
	targets := [2]target{{"no-op", noopURL, np.cmd.Process.Pid}, {"sops-webhook", wh.URL, wh.PID()}}
	for _, s := range scen {
		for _, c := range concurrency {
			step("load: %s, concurrency %d, %d rounds of %s per server", s.name, c, rounds, d/time.Duration(rounds))
			measured := make([][]point, len(targets))
			for k := range rounds {
				if c == 1 {
					pair := alternate(ctx, bundle.CACert, targets, s.body, d/time.Duration(rounds))
					measured[0], measured[1] = append(measured[0], pair[0]), append(measured[1], pair[1])
					continue
				}
				for j := range targets {
					i := (j + k) % len(targets)
					measured[i] = append(measured[i], load(ctx, bundle.CACert, targets[i].url, targets[i].pid, s.body, c, d/time.Duration(rounds)))
				}
			}
			for i, target := range targets {
				p := merge(measured[i])
				p.scenario, p.target = s.name, target.name
				rep.points = append(rep.points, p)
			}
		}
	}
	stopSampling()

	step("client-certificate handshake: the no-op with and without it, new connections and kept alive")
	if rep.handshake, err = handshakeCost(ctx, noop, noopDir, bundle.CACert, targets[0], scen[0].body, d, rounds); err != nil {
		return err
	}

	step("sops CLI, one process per document")
	rep.sopsCLI = sopsCLIRate(tb, key, quick)
	rep.inProcessDataKey = inProcessRate(tb, key, d, false)
	rep.inProcess = inProcessRate(tb, key, d, true)
	step("KMS calls for 1,000 Secrets from one values file (AWS KMS stand-in)")
	if rep.kms, err = kmsCalls(tb, work, quick); err != nil {
		return err
	}
	step("helm install of 100 encrypted Secrets through the real API server")
	if rep.helm, err = helmInstall(ctx, tb, work, bin, noopURL, bundle.CACert, key, quick); err != nil {
		return err
	}
	step("cold path: every format and size, in-process and with the sops CLI")
	if rep.cold, err = coldPath(tb, key, quick); err != nil {
		return err
	}
	step("flood: the victim's latency with and without eight senders of 1 MiB documents")
	if rep.flood, err = floodVictim(ctx, tb, work, bin, key, quick); err != nil {
		return err
	}
	step("Go benchmarks of package decrypt")
	rep.goBench = goBenchmarks(root, quick)

	step("writing %s", out)
	return rep.write(out)
}

// scenario is one AdmissionReview the load generator sends.
type scenario struct {
	name, goal string
	body       []byte
}

func review(kind string, obj runtime.Object) []byte {
	raw, _ := json.Marshal(obj)
	b, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "bench", Kind: metav1.GroupVersionKind{Version: "v1", Kind: kind},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: strings.ToLower(kind) + "s"}, Namespace: "bench",
			Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	})
	return b
}

func scenarios(tb *testbed.CommandTB, key sopskit.AgeKey) []scenario {
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	plainConfig := strings.Repeat("setting: value that is not secret at all\n", 50)
	docs := map[string][]byte{
		"app.env":     sopskit.SopsEncrypt(tb, []byte("DB_USER=app\nDB_PASSWORD=bench-password\nAPI_KEY=bench-key\n"), "dotenv", r),
		"config.yaml": sopskit.SopsEncrypt(tb, []byte("db:\n    password: bench\n    port: 5432\n"), "yaml", r),
		"creds.json":  sopskit.SopsEncrypt(tb, []byte(`{"token":"bench","retries":3}`), "json", r),
	}
	var plain strings.Builder
	for i := range 20 {
		fmt.Fprintf(&plain, "k%02d: secret-value-%02d\n", i, i)
	}
	values := sopskit.SopsEncrypt(tb, []byte(plain.String()), "yaml", r)
	var file strings.Builder
	for _, l := range sopskit.ValuesLeaves(tb, values) {
		fmt.Fprintf(&file, "%s = %s\n", strings.TrimSuffix(l.Path, ":"), l.Value)
	}
	secret := func(data map[string][]byte, ann map[string]string) *corev1.Secret {
		return &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: metav1.ObjectMeta{Name: "bench", Namespace: "bench", Annotations: ann}, Data: data}
	}
	return []scenario{
		{"(i) Secret, no SOPS content", "≥ 0.95×", review("Secret", secret(map[string][]byte{"password": []byte("hunter2"), "config.yaml": []byte(plainConfig)}, nil))},
		{"(ii) Secret, three documents (age)", "≥ 0.85× (warm cache)", review("Secret", secret(docs, nil))},
		{"(iii) Secret, values payload, 20 tokens", "≥ 0.85× (warm cache)", review("Secret", secret(map[string][]byte{"app.ini": []byte(file.String())}, map[string]string{mutate.AnnotationValues: sopskit.ValuesIndex(tb, values)}))},
		{"(iv) ConfigMap, 1 MiB, no SOPS content", "≥ 0.95×", review("ConfigMap", &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: metav1.ObjectMeta{Name: "big", Namespace: "bench"}, Data: map[string]string{"big.txt": strings.Repeat("x", 1<<20-1024)}})},
	}
}

// sampleMemory samples the webhook's peak RSS and its goroutines every 2 s
// until the returned func is called. The RSS peak is the kernel's
// high-water mark, so sampling it seldom misses nothing; the goroutines
// come from a scrape of /metrics, which costs the webhook about 2 ms of
// CPU: every 200 ms that was 1 % of its CPU at concurrency 1, charged to
// it and not to the no-op.
func sampleMemory(wh *testbed.Webhook, rep *report) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if _, peak := testbed.ProcessMemory(wh.PID()); peak > rep.rssPeak {
					rep.rssPeak = peak
				}
				if g := goroutines(wh.MetricsURL); g > rep.goroutines[1] {
					rep.goroutines[1] = g
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}

func machine() string {
	out, _ := exec.Command("go", "version").Output()
	cpus, _ := os.ReadFile("/proc/cpuinfo")
	n := strings.Count(string(cpus), "\nprocessor") + 1
	return fmt.Sprintf("%s, %d CPUs", strings.TrimSpace(string(out)), n)
}
