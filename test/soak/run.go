package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/pkg/selfcerts"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

// step prints a line of progress.
var step = testbed.Progress("soak")

// tally counts outcomes of the stream.
type tally struct {
	mu       sync.Mutex
	sent     int64
	admitted []string
	denied   map[string]int // by reason
	lost     []string       // errors without a clear denial
}

// classify records one create's outcome. A denial by the webhook names
// itself; one by the API server because no replica answered says "failed
// calling webhook". Anything else is lost.
func (t *tally) classify(name string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sent++
	switch {
	case err == nil:
		t.admitted = append(t.admitted, name)
	case strings.Contains(err.Error(), "sops-webhook: cannot decrypt"), strings.Contains(err.Error(), "sops-webhook: could not decrypt"):
		// A denial ("cannot") or a retryable refusal ("could not").
		msg := err.Error()
		i := strings.Index(msg, "sops-webhook: c")
		reason := msg[i:]
		if j := strings.Index(reason, "field data.app.yaml: "); j >= 0 {
			reason = reason[j+len("field data.app.yaml: "):]
		}
		if j := strings.Index(reason, "; the request is not at fault"); j >= 0 {
			reason = "retryable: " + reason[:j]
		}
		t.denied[reason]++
	case strings.Contains(err.Error(), "failed calling webhook"):
		t.denied["API server: failed calling webhook (no replica answered)"]++
	default:
		t.lost = append(t.lost, err.Error())
	}
}

type sample struct {
	at       time.Duration
	rss      [2]int64
	admitted int64
}

type event struct {
	at   time.Duration
	what string
}

func run(ctx context.Context, d time.Duration, workers int, out string) (err error) {
	work, err := os.MkdirTemp("", "sops-webhook-soak-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(work) }()
	tb := testbed.NewCommandTB(work)
	defer tb.Close()
	defer testbed.Recover(&err)

	step("control plane, AWS KMS stand-in, age key")
	cp, err := testbed.StartControlPlane()
	if err != nil {
		return err
	}
	defer cp.Stop()
	kubeconfig := filepath.Join(work, "kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig); err != nil {
		return err
	}
	for _, ns := range []string{"sops-webhook", "apps"} {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
		if ns == "apps" {
			obj.Labels = map[string]string{mutate.LabelDecrypt: "enabled"}
		}
		if err := cp.Client.Create(ctx, obj); err != nil {
			return err
		}
	}
	kms, err := standin.StartAWS(work, standin.AWSOptions{})
	if err != nil {
		return err
	}
	defer kms.Close()
	key := sopskit.NewAgeKey(tb, false)
	arn := "arn:aws:kms:eu-west-1:111122223333:key/soak"
	config := filepath.Join(work, "config.yaml")
	if err := os.WriteFile(config, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: team\n    age: {identityFile: "+key.IdentityFile+"}\n  - name: kms\n    awsKms: {arn: \"arn:aws:kms:eu-west-1:111122223333:key/*\"}\n"), 0o600); err != nil {
		return err
	}
	bin, err := testbed.BuildWebhook(work)
	if err != nil {
		return err
	}

	// The registration first: the self-managed replicas patch its caBundle.
	mwc, err := testbed.LoadWebhookConfiguration("https://127.0.0.1:1/not-yet", nil)
	if err != nil {
		return err
	}
	if err := cp.Client.Create(ctx, mwc); err != nil {
		return err
	}
	start := func(i, gen int) (*testbed.Webhook, error) {
		return testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{
			Config: config, WorkDir: filepath.Join(work, fmt.Sprintf("replica-%d-%d", i, gen)), SelfManaged: true,
			Args: []string{"--certificates=self-managed", "--kubeconfig", kubeconfig, "--namespace", "sops-webhook",
				"--tls-hosts", "127.0.0.1", "--cert-check-interval", "500ms", "--shutdown-delay", "1s",
				"--data-key-cache-ttl", "2s", "--document-cache-bytes", "0", "--log-level", "error"},
			Env: kms.AdminEnv(),
		})
	}
	step("two replicas, self-managed certificates, behind a Service stand-in")
	var replicas [2]atomic.Pointer[testbed.Webhook]
	for i := range 2 {
		w, err := start(i, 0)
		if err != nil {
			return err
		}
		replicas[i].Store(w)
	}
	defer func() {
		for i := range replicas {
			_ = replicas[i].Load().Stop()
		}
	}()
	proxy, err := testbed.StartServiceProxy(replicas[0].Load(), replicas[1].Load())
	if err != nil {
		return err
	}
	defer proxy.Close()
	url := "https://" + proxy.Addr + "/mutate"
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(mwc), mwc); err != nil {
			return err
		}
		for i := range mwc.Webhooks {
			mwc.Webhooks[i].ClientConfig.URL = &url
		}
		return cp.Client.Update(ctx, mwc)
	}); err != nil {
		return err
	}
	if err := cp.WaitForWebhook(ctx, "apps"); err != nil {
		return err
	}

	step("payloads: 16 age and 16 KMS documents, encrypted by the sops CLI")
	var payloads [][]byte
	for i := range 16 {
		payloads = append(payloads,
			sopskit.SopsEncrypt(tb, []byte(fmt.Sprintf("password: soak-age-%02d\n", i)), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}}),
			sopskit.SopsEncrypt(tb, []byte(fmt.Sprintf("password: soak-kms-%02d\n", i)), "yaml", sopskit.Recipients{KMS: []string{arn}, Env: kms.AdminEnv()}))
	}

	step("flood payloads: %d senders of distinct 1 MiB documents, and documents that must be denied", floodSenders)
	other := sopskit.NewAgeKey(tb, false)
	floodDocs := flood.NewFloodPayloads(tb, sopskit.Recipients{Age: []sopskit.AgeKey{key}}, sopskit.Recipients{Age: []sopskit.AgeKey{other}}, floodSenders, floodPerSender)

	t := &tally{denied: map[string]int{}}
	var (
		timings []timing
		tMu     sync.Mutex
	)
	began := time.Now()
	deadline := began.Add(d)
	var wg sync.WaitGroup
	step("stream: %d writers for %s", workers, d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				name := fmt.Sprintf("soak-%d-%d", w, i)
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				at := time.Since(began)
				err := cp.Client.Create(cctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps"},
					Data: map[string][]byte{"app.yaml": payloads[(w+i)%len(payloads)]}})
				took := time.Since(began) - at
				cancel()
				t.classify(name, err)
				tMu.Lock()
				timings = append(timings, timing{at, took})
				tMu.Unlock()
			}
		}()
	}

	var (
		events  []event
		samples []sample
		evMu    sync.Mutex
	)
	note := func(format string, a ...any) {
		evMu.Lock()
		defer evMu.Unlock()
		events = append(events, event{time.Since(began), fmt.Sprintf(format, a...)})
		step(format, a...)
	}
	at := func(frac float64) { time.Sleep(time.Until(began.Add(time.Duration(frac * float64(d))))) }
	faultsDone := make(chan error, 1)
	var floodRes *floodPhase
	go func() {
		faultsDone <- func() error {
			at(0.15)
			note("fault: the KMS stand-in hangs for 10s")
			kms.SetHanging(true)
			time.Sleep(10 * time.Second)
			kms.SetHanging(false)
			note("fault over: the KMS stand-in answers again")
			for i, frac := range []float64{0.35, 0.55} {
				at(frac)
				note("fault: replica %d restarts (SIGTERM, then a new process)", i)
				if err := replicas[i].Load().Stop(); err != nil {
					return fmt.Errorf("replica %d did not stop cleanly: %w", i, err)
				}
				w, err := start(i, 1)
				if err != nil {
					return err
				}
				replicas[i].Store(w)
				proxy.Replace(i, w)
				note("replica %d is back", i)
			}
			at(0.75)
			note("fault: certificate rotation requested")
			value := time.Now().UTC().Format(time.RFC3339Nano)
			if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				sec := &corev1.Secret{}
				if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: "sops-webhook-tls"}, sec); err != nil {
					return err
				}
				if sec.Annotations == nil {
					sec.Annotations = map[string]string{}
				}
				sec.Annotations[selfcerts.AnnotationRotate] = value
				return cp.Client.Update(ctx, sec)
			}); err != nil {
				return err
			}
			at(0.85)
			note("fault: a tenant floods with %d distinct valid documents (1 MiB, and one dense) and %d that must be denied, %d senders at once", floodDocs.Valid(), len(floodDocs.Denied)*floodDeniedSends, len(floodDocs.Heavy)+len(floodDocs.Denied))
			floodRes = runFlood(ctx, cp.Client, floodDocs, began)
			note("flood over: %d sent, %d decrypted, %d refused as busy and sent again, %d denied, %d lost", floodRes.sent, len(floodRes.decrypted), floodRes.busy, floodRes.denied, len(floodRes.lost))
			return nil
		}()
	}()
	for time.Now().Before(deadline) {
		var s sample
		s.at = time.Since(began)
		for i := range replicas {
			s.rss[i], _ = testbed.ProcessMemory(replicas[i].Load().PID())
		}
		t.mu.Lock()
		s.admitted = int64(len(t.admitted))
		t.mu.Unlock()
		samples = append(samples, s)
		time.Sleep(d / 36)
	}
	wg.Wait()
	if err := <-faultsDone; err != nil {
		return err
	}

	step("checking what was stored")
	var list corev1.SecretList
	if err := cp.Client.List(ctx, &list, client.InNamespace("apps")); err != nil {
		return err
	}
	stored := map[string]string{}
	for _, s := range list.Items {
		for _, v := range s.Data {
			stored[s.Name] = string(v)
		}
	}
	var encrypted, missing []string
	for _, n := range t.admitted {
		v, ok := stored[n]
		switch {
		case !ok:
			missing = append(missing, n)
		case strings.Contains(v, "ENC[") || !strings.HasPrefix(v, "password: soak-"):
			encrypted = append(encrypted, n)
		}
	}
	if floodRes == nil {
		return fmt.Errorf("the flood phase did not run: the stream ended first")
	}
	for _, n := range floodRes.decrypted {
		if v, ok := stored[n]; !ok || strings.Contains(v, "ENC[") {
			encrypted = append(encrypted, n)
		}
	}
	rep := soakReport{d: d, workers: workers, t: t, events: events, samples: samples, encrypted: encrypted, missing: missing,
		flood: floodRes, quiet: latencies(timings, d/20, d*15/100), flooded: latencies(timings, floodRes.start, floodRes.end)}
	if err := rep.write(out); err != nil {
		return err
	}
	fmt.Print(rep.summary())
	if len(t.lost) > 0 || len(encrypted) > 0 || len(missing) > 0 || len(floodRes.lost) > 0 {
		return fmt.Errorf("%d lost, %d stored encrypted, %d admitted but missing, %d flood requests lost", len(t.lost), len(encrypted), len(missing), len(floodRes.lost))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type soakReport struct {
	d                  time.Duration
	workers            int
	t                  *tally
	events             []event
	samples            []sample
	encrypted, missing []string
	flood              *floodPhase
	// quiet and flooded are the stream's create latencies, sorted: before
	// the first fault, and while the flood ran.
	quiet, flooded []time.Duration
}

func (r soakReport) summary() string {
	var b strings.Builder
	denied := 0
	for _, n := range r.t.denied {
		denied += n
	}
	fmt.Fprintf(&b, "sent %d, admitted %d, denied %d, lost %d; stored encrypted %d, admitted but missing %d\n",
		r.t.sent, len(r.t.admitted), denied, len(r.t.lost), len(r.encrypted), len(r.missing))
	return b.String()
}

func (r soakReport) write(path string) error {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# Soak test")
	w("")
	w("Regenerated by `make soak` (`go run ./test/soak`): %d writers creating Secrets for %s through a real kube-apiserver, to two webhook replicas (self-managed certificates) behind a Service stand-in, with faults injected. Payloads: 16 documents for an age key, 16 for an AWS KMS key (stand-in, through the real AWS SDK); data-key cache 2 s and no document cache, so KMS is called throughout.", r.workers, r.d)
	w("")
	w("**%s**", strings.TrimSpace(r.summary()))
	w("")
	w("## Faults")
	w("")
	w("| at | event |")
	w("|---|---|")
	for _, e := range r.events {
		w("| %s | %s |", e.at.Round(time.Second), e.what)
	}
	w("")
	w("## Outcomes")
	w("")
	w("| outcome | count |")
	w("|---|---|")
	w("| admitted (stored decrypted; checked afterwards) | %d |", len(r.t.admitted))
	reasons := make([]string, 0, len(r.t.denied))
	for k := range r.t.denied {
		reasons = append(reasons, k)
	}
	sort.Strings(reasons)
	for _, k := range reasons {
		w("| denied: %s | %d |", strings.ReplaceAll(k, "|", "/"), r.t.denied[k])
	}
	w("| lost (an error without a clear denial) | %d |", len(r.t.lost))
	w("| admitted but stored encrypted | %d |", len(r.encrypted))
	w("")
	w("## The flood")
	w("")
	f := r.flood
	w("From %s to %s a tenant created Secrets of distinct ~1 MiB documents (JSON and YAML) and the densest valid document the items cap lets through (sent again when refused as busy), and documents that must be denied (tampered, for another key, and small hostile ones: an alias bomb, equal keys, flow lists under and over the items cap, JSON nested 2,000 deep), while the stream went on. The stream's latency is the API server's too: it decodes, sends, patches and stores every 1 MiB object on the same two cores as both replicas and etcd (the webhook's own victim latency under a flood is in benchmarks.md).", f.start.Round(time.Second), f.end.Round(time.Second))
	w("")
	w("| flood outcome | count |")
	w("|---|---|")
	w("| sent | %d |", f.sent)
	w("| stored decrypted (checked afterwards) | %d |", len(f.decrypted))
	w("| refused as busy (503, retryable; valid ones sent again) | %d |", f.busy)
	w("| denied (tampered, another key, hostile) | %d |", f.denied)
	w("| lost | %d |", len(f.lost))
	w("")
	w("| stream creates | count | p50 ms | p99 ms |")
	w("|---|---|---|---|")
	w("| before the first fault | %d | %.1f | %.1f |", len(r.quiet), ms(flood.Percentile(r.quiet, 0.5)), ms(flood.Percentile(r.quiet, 0.99)))
	w("| during the flood | %d | %.1f | %.1f |", len(r.flooded), ms(flood.Percentile(r.flooded, 0.5)), ms(flood.Percentile(r.flooded, 0.99)))
	w("")
	w("## Memory over time")
	w("")
	w("| at | replica 0 RSS | replica 1 RSS | admitted so far |")
	w("|---|---|---|---|")
	for _, s := range r.samples {
		w("| %s | %s | %s | %d |", s.at.Round(time.Second), rssCell(s.rss[0]), rssCell(s.rss[1]), s.admitted)
	}
	if len(r.t.lost) > 0 {
		w("")
		w("## Lost requests (first 10)")
		w("")
		for _, l := range r.t.lost[:min(10, len(r.t.lost))] {
			w("- `%s`", l)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// rssCell formats a replica's RSS in KiB; a replica sampled while it
// restarts has no process to measure.
func rssCell(kib int64) string {
	if kib == 0 {
		return "restarting"
	}
	return fmt.Sprintf("%.1f MiB", float64(kib)/1024)
}
