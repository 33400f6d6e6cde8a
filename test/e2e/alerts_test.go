package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"

	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/standin"
)

// rulesFile is the shipped PrometheusRule; the chart renders the same rules
// (TestDeployment checks they are equal).
const rulesFile = "manifests/monitoring/prometheusrule.yaml"

// alertRule is one rule of the PrometheusRule.
type alertRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// TestAlerts proves the shipped alert rules against what the real webhook
// binary and the real kube-apiserver emit. It drives a policy refusal, a
// key-service outage (the Vault stand-in hanging), tampered documents, a
// config reload failure and a webhook that no longer answers; scrapes both
// /metrics endpoints; and hands exactly those series to `promtool test
// rules`, which evaluates every rule's expression over them. Each alert must
// fire with the labels its expression is meant to select, so a selector on
// a metric or label value that is never emitted fails the test.
func TestAlerts(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	tools := sopskit.Need(t, "promtool", func(t sopskit.Tools) string { return t.Promtool })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b := newIdentityBed(ctx, t)
	tokenFile, _ := b.tokenFile(ctx, t, "sops-webhook")
	vault, err := standin.StartVault(b.work, standin.VaultOptions{
		Review: standin.TokenReviewer(b.kube),
		Roles:  map[string]string{"sops-webhook": webhookSubject},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = vault.Close() })

	local, owned := sopskit.NewAgeKey(t, false), sopskit.NewAgeKey(t, false)
	config := `apiVersion: sops-webhook.io/v1alpha1
kind: Config
keys:
  - name: local
    age: {identityFile: ` + local.IdentityFile + `}
  - name: owned
    age: {identityFile: ` + owned.IdentityFile + `}
  - name: generated
    generate: {rotateEvery: 0s}
  - name: vault
    vaultTransit:
      address: ` + vault.URL + `
      enginePath: transit
      keyName: "app-*"
      caFile: ` + vault.CAFile + `
      kubernetesAuth: {role: sops-webhook, tokenFile: ` + tokenFile + `}
policy:
  - {keys: [owned], namespaces: [elsewhere]}
  - {keys: [local, vault, generated], namespaces: ["*"]}
`
	// A 1 ms budget wait makes a burst of large documents overflow the
	// heavy lane, which handles one large request at a time on this
	// machine.
	admin := filepath.Join(b.work, "admin.kubeconfig")
	require.NoError(t, b.cp.WriteKubeconfig(admin))
	wh := b.startWebhookWith(ctx, t, "alerts", config, []string{"--config-check-interval", "200ms", "--budget-wait", "1ms", "--kubeconfig", admin, "--namespace", "sops-webhook"}, nil)
	mine := sopskit.Recipients{Age: []sopskit.AgeKey{local}}

	// What operators alert on, driven for real.
	require.NoError(t, b.create(ctx, "decrypted", sopskit.SopsEncrypt(t, []byte("password: alerts-PLAINTEXT-0\n"), "yaml", mine)))

	err = b.create(ctx, "not-granted", sopskit.SopsEncrypt(t, []byte("password: alerts-PLAINTEXT-1\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{owned}}))
	require.Error(t, err)
	require.True(t, apierrors.IsForbidden(err), "a policy refusal is the request's fault: %v", err)

	forVault := sopskit.SopsEncrypt(t, []byte("password: alerts-PLAINTEXT-2\n"), "yaml", vault.Recipients("app-1"))
	vault.SetHanging(true)
	err = b.create(ctx, "outage", forVault)
	vault.SetHanging(false)
	require.Error(t, err)
	require.True(t, apierrors.IsServiceUnavailable(err), "an outage is retryable: %v", err)

	doc := sopskit.SopsEncrypt(t, []byte("password: alerts-PLAINTEXT-3\nuser: alerts-PLAINTEXT-4\nnote_unencrypted: public\n"), "yaml", mine, "--unencrypted-suffix", "_unencrypted")
	err = b.create(ctx, "mac", bytes.Replace(doc, []byte("note_unencrypted: public"), []byte("note_unencrypted: forged"), 1))
	require.True(t, apierrors.IsForbidden(err), "tampered: %v", err)
	err = b.create(ctx, "swapped", swapYAMLValues(t, doc, "password", "user"))
	require.True(t, apierrors.IsForbidden(err), "swapped values: %v", err)

	// A generation used, then retired while a file still needs it.
	keys := &clusterkeys.Store{Secrets: b.kube.CoreV1().Secrets("sops-webhook"), Name: clusterkeys.DefaultSecretName}
	gen, err := keys.Read(ctx)
	require.NoError(t, err)
	first := gen.Key("generated").Generations[0]
	forFirst := sopskit.SopsEncrypt(t, []byte("password: alerts-PLAINTEXT-6\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: first.Recipient}}})
	require.NoError(t, b.create(ctx, "generation-1", forFirst))
	secret, err := b.kube.CoreV1().Secrets("sops-webhook").Get(ctx, clusterkeys.DefaultSecretName, metav1.GetOptions{})
	require.NoError(t, err)
	secret.Annotations = map[string]string{clusterkeys.AnnotationRetire: "generated@1"}
	_, err = b.kube.CoreV1().Secrets("sops-webhook").Update(ctx, secret, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(wh.Logs(), "1 retired "+first.Recipient) }, 20*time.Second, 100*time.Millisecond)
	err = b.create(ctx, "retired", forFirst)
	require.True(t, apierrors.IsForbidden(err), "a retired generation: %v", err)
	require.Contains(t, err.Error(), "retired generation")

	busy := busyBurst(ctx, t, b, sopskit.SopsEncrypt(t, sopskit.PlainOfSize("yaml", 200<<10), "yaml", mine))
	require.True(t, apierrors.IsServiceUnavailable(busy), "a full budget is retryable: %v", busy)
	require.Contains(t, busy.Error(), "the webhook is busy handling")

	require.NoError(t, os.WriteFile(filepath.Join(b.work, "alerts", "config.yaml"), []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys: []\n"), 0o600))
	require.Eventually(t, func() bool {
		v, err := wh.Metric(`sops_webhook_config_reloads_total{result="failure"}`)
		return err == nil && v >= 1
	}, 20*time.Second, 100*time.Millisecond, "the refused reload is counted")

	// A caller without the API server's client certificate is refused.
	_, err = tls.Dial("tcp", wh.Addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})
	require.Error(t, err, "a caller without a client certificate completed the handshake")

	webhookSeries := scrape(t, http.DefaultClient, wh.MetricsURL, "sops_webhook_")

	// A webhook that answers anyone says so; the one above, which requires
	// the API server's certificate, does not fire the same alert.
	openConfig := filepath.Join(b.work, "open.yaml")
	require.NoError(t, os.WriteFile(openConfig, local.Config("local"), 0o600))
	open, err := testbed.StartWebhookWith(ctx, b.bin, testbed.WebhookOptions{
		Config: openConfig, WorkDir: filepath.Join(b.work, "open"), Args: []string{"--caller-auth", "network-policy"},
	})
	require.NoError(t, err)
	webhookSeries = append(webhookSeries, scrape(t, http.DefaultClient, open.MetricsURL, "sops_webhook_unauthenticated_callers_served")...)
	require.NoError(t, open.Stop())

	// The webhook stops answering: the API server fails the call.
	require.NoError(t, wh.Stop())
	err = b.create(ctx, "unreachable", sopskit.SopsEncrypt(t, []byte("password: alerts-PLAINTEXT-5\n"), "yaml", mine))
	require.Error(t, err)
	require.Contains(t, err.Error(), "failed calling webhook")
	raw, err := b.kube.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	require.NoError(t, err)
	apiSeries := parseSeries(t, raw, "apiserver_admission_webhook_rejection_count")

	// The rules, as Prometheus loads them.
	rules := loadRules(t)
	dir := t.TempDir()
	rulesPath := filepath.Join(dir, "rules.yaml")
	writeYAML(t, rulesPath, map[string]any{"groups": rulesGroups(t)})
	out, err := exec.Command(tools.Promtool, "check", "rules", rulesPath).CombinedOutput()
	require.NoError(t, err, "promtool check rules: %s", out)

	// What each alert must report, given what was driven above.
	want := map[string][]map[string]string{
		"SopsWebhookErrors":                 {{"kind": "Secret", "operation": "CREATE"}},
		"SopsWebhookKeyServiceUnavailable":  {{"format": "yaml"}},
		"SopsWebhookKeyNotGranted":          {{"format": "yaml"}},
		"SopsWebhookTamperedPayload":        {{"format": "yaml", "outcome": "mac_mismatch"}, {"format": "yaml", "outcome": "corrupt"}},
		"SopsWebhookDenials":                {{"kind": "Secret"}},
		"SopsWebhookConfigReloadFailed":     {{"result": "failure"}},
		"SopsWebhookSlow":                   {{}},
		"SopsWebhookBusy":                   {{"lane": "heavy"}},
		"SopsWebhookUnreachable":            {{}},
		"SopsWebhookUnauthenticatedCallers": {{"mode": "network-policy"}},
		"SopsWebhookCallersRefused":         {{"reason": "no_certificate"}},
		"SopsWebhookRetiredGenerationUsed":  {{"key": "generated", "generation": "1"}},
	}
	var tests []map[string]any
	for _, r := range rules {
		labelSets, ok := want[r.Alert]
		require.True(t, ok, "alert %s has no expectation in this test", r.Alert)
		var exp []map[string]any
		for _, ls := range labelSets {
			labels := map[string]string{}
			for k, v := range r.Labels {
				labels[k] = v
			}
			for k, v := range ls {
				labels[k] = v
			}
			exp = append(exp, map[string]any{"exp_labels": labels, "exp_annotations": expandAnnotations(r.Annotations, labels)})
		}
		tests = append(tests, map[string]any{"eval_time": "20m", "alertname": r.Alert, "exp_alerts": exp})
	}
	require.Len(t, tests, len(want), "every expected alert is shipped")

	// Each scraped counter grows by its scraped value every minute, so a
	// series that was emitted has a positive rate and increase.
	var input []map[string]string
	for _, s := range append(webhookSeries, apiSeries...) {
		input = append(input, map[string]string{"series": s.selector(), "values": growth(s.value)})
	}
	testPath := filepath.Join(dir, "alerts_test.yaml")
	writeYAML(t, testPath, map[string]any{
		"rule_files":          []string{rulesPath},
		"evaluation_interval": "1m",
		"tests": []map[string]any{{
			"interval":        "1m",
			"input_series":    input,
			"alert_rule_test": tests,
		}},
	})
	out, err = exec.Command(tools.Promtool, "test", "rules", testPath).CombinedOutput()
	if !assert.NoError(t, err, "promtool test rules:\n%s", out) {
		series, _ := os.ReadFile(testPath)
		t.Logf("promtool input:\n%s", series)
	}
	t.Logf("promtool: %s", strings.TrimSpace(string(out)))

	t.Run("the Grafana dashboard's queries parse and name scraped metrics", func(t *testing.T) {
		checkDashboard(t, tools.Promtool, webhookSeries)
	})
}

// dashboardFile is the shipped Grafana dashboard.
const dashboardFile = "manifests/monitoring/grafana-dashboard.json"

// metricName matches the metric names a PromQL expression of ours uses.
var metricName = regexp.MustCompile(`\bsops_webhook_[a-z_]+`)

// checkDashboard parses every query of the dashboard's panels with
// promtool (as recording rules) and checks that each metric it names is in
// scraped, the series of a real webhook.
func checkDashboard(t *testing.T, promtool string, scraped []series) {
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	require.NoError(t, json.Unmarshal(readRepo(t, dashboardFile), &dash))
	have := map[string]bool{}
	for _, s := range scraped {
		have[s.name] = true
	}
	var rules []map[string]string
	for i, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for j, target := range p.Targets {
			require.NotEmpty(t, target.Expr, "panel %q", p.Title)
			rules = append(rules, map[string]string{"record": fmt.Sprintf("dashboard:panel_%d_%d", i, j), "expr": target.Expr})
			names := metricName.FindAllString(target.Expr, -1)
			require.NotEmpty(t, names, "panel %q: %s names no metric of the webhook", p.Title, target.Expr)
			for _, n := range names {
				assert.True(t, have[n], "panel %q: %s is not in a real scrape", p.Title, n)
			}
		}
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	writeYAML(t, path, map[string]any{"groups": []map[string]any{{"name": "dashboard", "rules": rules}}})
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	require.NoError(t, err, "promtool check rules (the dashboard's queries): %s", out)
}

// busyBurst creates Secrets holding doc four at a time, until the API
// server answers one of them with the budget's refusal, which it returns.
// It gives up after 20 bursts.
func busyBurst(ctx context.Context, t *testing.T, b *identityBed, doc []byte) error {
	t.Helper()
	for burst := range 20 {
		errs := make(chan error, 4)
		for i := range 4 {
			go func() { errs <- b.create(ctx, "busy-"+strconv.Itoa(burst)+"-"+strconv.Itoa(i), doc) }()
		}
		var busy error
		for range 4 {
			if err := <-errs; err != nil && strings.Contains(err.Error(), "busy") {
				busy = err
			} else if err != nil {
				t.Fatalf("a large document failed otherwise: %v", err)
			}
		}
		if busy != nil {
			return busy
		}
	}
	t.Fatal("no burst of large documents overflowed the budget")
	return nil
}

// series is one scraped sample.
type series struct {
	name   string
	labels map[string]string
	value  float64
}

// selector writes s in the series notation promtool reads.
func (s series) selector() string {
	keys := make([]string, 0, len(s.labels))
	for k := range s.labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(s.labels[k])
	}
	return s.name + "{" + strings.Join(parts, ",") + "}"
}

// growth is a promtool value sequence that starts at 0 and grows by v per
// interval for an hour; 0 stays 0.
func growth(v float64) string {
	return "0+" + strconv.FormatFloat(v, 'f', -1, 64) + "x60"
}

// scrape reads url's exposition and keeps the families whose names start
// with prefix.
func scrape(t *testing.T, c *http.Client, url, prefix string) []series {
	t.Helper()
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := parseSeries(t, raw, prefix)
	require.NotEmpty(t, out, "no %s series at %s", prefix, url)
	return out
}

// parseSeries flattens the counters, gauges and histograms of an exposition whose
// family names start with prefix, as Prometheus stores them.
func parseSeries(t *testing.T, raw []byte, prefix string) []series {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	require.NoError(t, err)
	var out []series
	for name, f := range fams {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			with := func(k, v string) map[string]string {
				c := map[string]string{k: v}
				for a, b := range labels {
					c[a] = b
				}
				return c
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out = append(out, series{name, labels, m.GetCounter().GetValue()})
			case dto.MetricType_GAUGE:
				out = append(out, series{name, labels, m.GetGauge().GetValue()})
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, bk := range h.GetBucket() {
					out = append(out, series{name + "_bucket", with("le", strconv.FormatFloat(bk.GetUpperBound(), 'f', -1, 64)), float64(bk.GetCumulativeCount())})
				}
				out = append(out, series{name + "_bucket", with("le", "+Inf"), float64(h.GetSampleCount())},
					series{name + "_count", labels, float64(h.GetSampleCount())},
					series{name + "_sum", labels, h.GetSampleSum()})
			}
		}
	}
	slices.SortFunc(out, func(a, b series) int { return strings.Compare(a.selector(), b.selector()) })
	return out
}

// loadRules reads the rules of the shipped PrometheusRule.
func loadRules(t *testing.T) []alertRule {
	t.Helper()
	var pr struct {
		Spec struct {
			Groups []struct {
				Rules []alertRule `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	require.NoError(t, sigsyaml.Unmarshal(readRepo(t, rulesFile), &pr))
	var out []alertRule
	for _, g := range pr.Spec.Groups {
		out = append(out, g.Rules...)
	}
	require.NotEmpty(t, out)
	return out
}

// rulesGroups returns the PrometheusRule's spec.groups, untouched.
func rulesGroups(t *testing.T) any {
	t.Helper()
	var pr map[string]any
	require.NoError(t, sigsyaml.Unmarshal(readRepo(t, rulesFile), &pr))
	return pr["spec"].(map[string]any)["groups"]
}

func readRepo(t *testing.T, rel string) []byte {
	t.Helper()
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	raw, err := os.ReadFile(filepath.Join(root, rel))
	require.NoError(t, err)
	return raw
}

// expandAnnotations renders the {{ $labels.name }} references of the
// annotations with labels, as Prometheus does for these simple templates.
func expandAnnotations(a map[string]string, labels map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		for name, value := range labels {
			v = strings.ReplaceAll(v, "{{ $labels."+name+" }}", value)
		}
		out[k] = v
	}
	return out
}

func writeYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := sigsyaml.Marshal(v)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, raw, 0o600))
}

// swapYAMLValues swaps the encrypted values of two top-level keys of a
// YAML SOPS document: each still decrypts, but with the wrong path as
// additional data, so authentication fails.
func swapYAMLValues(t *testing.T, doc []byte, a, b string) []byte {
	t.Helper()
	lines := strings.Split(string(doc), "\n")
	ia, ib := -1, -1
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, a+": ENC["):
			ia = i
		case strings.HasPrefix(l, b+": ENC["):
			ib = i
		}
	}
	require.True(t, ia >= 0 && ib >= 0, "both keys are encrypted")
	va, vb := strings.TrimPrefix(lines[ia], a+": "), strings.TrimPrefix(lines[ib], b+": ")
	lines[ia], lines[ib] = a+": "+vb, b+": "+va
	return []byte(strings.Join(lines, "\n"))
}
