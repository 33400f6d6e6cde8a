package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/test/testbed"
)

// floodLimit is the shipped Deployment's memory limit (manifests/base).
const floodLimit = 256 << 20

// The flood's shape: bounded in count, so it stops by itself.
const (
	floodHeavySenders  = 8  // senders of valid documents, half JSON, half YAML
	floodDocsPerSender = 3  // distinct valid documents each heavy sender sends
	floodDeniedSends   = 10 // sends of each document that must be denied
	floodBusyRetries   = 30 // a valid document refused as busy is sent again, at most this often
	floodVictimWarm    = 200
)

// TestFlood runs the real webhook binary in a memory cgroup at the
// Deployment's limit and floods it over HTTPS on loopback: eight senders
// with distinct valid ~1 MiB documents (JSON and YAML), three with ~1 MiB
// documents that must be denied (a tampered MAC in each format, and one
// for a key the webhook lacks), while a victim sends small requests, a
// plain Secret and a 1 KiB document in turn. The webhook must survive
// without an OOM kill; every heavy request must be decrypted correctly,
// denied for its own reason, or refused as busy with the retryable message,
// and never end in a connection error; every victim request must be
// answered correctly. Victim latencies and peak memory are reported, not
// asserted.
func TestFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: floods the real webhook binary; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	key, other := testbed.NewAgeKey(t, false), testbed.NewAgeKey(t, false)
	mine := testbed.Recipients{Age: []testbed.AgeKey{key}}

	// The payloads, all distinct so that no request is answered from the
	// result cache, encrypted two at a time.
	start := time.Now()
	heavy := make([][]floodDoc, floodHeavySenders)
	for s := range heavy {
		heavy[s] = make([]floodDoc, floodDocsPerSender)
	}
	denied := make([]floodDoc, 3)
	t.Run("payloads", func(t *testing.T) {
		for s := range heavy {
			for j := range heavy[s] {
				t.Run(fmt.Sprintf("heavy-%d-%d", s, j), func(t *testing.T) {
					t.Parallel()
					heavy[s][j] = newFloodDoc(t, []string{"json", "yaml"}[s%2], mine)
				})
			}
		}
		t.Run("tampered-json", func(t *testing.T) { t.Parallel(); denied[0] = tamper(t, newFloodDoc(t, "json", mine)) })
		t.Run("tampered-yaml", func(t *testing.T) { t.Parallel(); denied[1] = tamper(t, newFloodDoc(t, "yaml", mine)) })
		t.Run("other-key", func(t *testing.T) {
			t.Parallel()
			denied[2] = newFloodDoc(t, "json", testbed.Recipients{Age: []testbed.AgeKey{other}})
			denied[2].denial = "no configured key can open it"
		})
	})
	require.False(t, t.Failed())
	var small []floodDoc
	for i := range 8 {
		plain := fmt.Sprintf("VICTIM_%d=%s\n", i, strings.Repeat("v", 1000))
		enc := testbed.SopsEncrypt(t, []byte(plain), "dotenv", mine)
		small = append(small, floodDoc{file: "app.env", enc: enc, plain: testbed.SopsDecrypt(t, enc, "dotenv", mine)})
	}
	t.Logf("payloads encrypted with the sops CLI in %s", time.Since(start).Round(time.Second))

	work := t.TempDir()
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	config := filepath.Join(work, "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: team-a\n    age: {identityFile: "+key.IdentityFile+"}\n"), 0o600))
	cg, err := testbed.NewMemoryCgroup("sops-webhook-flood", floodLimit)
	require.NoError(t, err, "the flood test runs the webhook in a memory cgroup")
	t.Cleanup(func() { assert.NoError(t, cg.Remove()) })
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: work, Log: verbose(), Cgroup: cg})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })
	assert.Contains(t, wh.Logs(), `"limit":"256.0 MiB"`, "the webhook read its limit from the cgroup")
	assert.Contains(t, wh.Logs(), `"goMemLimit":"230.4 MiB"`, "GOMEMLIMIT is 90 % of the limit")

	client := func() *http.Client { return caClient(t, wh.CABundle) }
	victim := &victim{url: wh.URL, client: client(), small: small}

	// Unloaded: the victim alone.
	for range floodVictimWarm {
		require.NoError(t, victim.send(ctx))
	}
	unloaded := victim.take()

	// The flood, with the victim sending until it ends.
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
		tally    = map[string]int{}
	)
	fail := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf(format, a...))
	}
	count := func(what string) {
		mu.Lock()
		defer mu.Unlock()
		tally[what]++
	}
	for i, docs := range heavy {
		wg.Go(func() {
			c := client()
			for j, d := range docs {
				for attempt := 0; ; attempt++ {
					res, err := sendReview(ctx, c, wh.URL, secretReview(fmt.Sprintf("heavy-%d-%d", i, j), d))
					if err != nil {
						fail("heavy %d/%d: %v", i, j, err)
						break
					}
					if res.busy() && attempt < floodBusyRetries {
						count("valid refused as busy, then sent again")
						time.Sleep(100 * time.Millisecond)
						continue
					}
					if err := d.check(res); err != nil {
						fail("heavy %d/%d (%s): %v", i, j, d.file, err)
					} else {
						count("valid decrypted")
					}
					break
				}
			}
		})
	}
	for i, d := range denied {
		wg.Go(func() {
			c := client()
			for j := range floodDeniedSends {
				res, err := sendReview(ctx, c, wh.URL, secretReview(fmt.Sprintf("denied-%d-%d", i, j), d))
				switch {
				case err != nil:
					fail("denied %d/%d: %v", i, j, err)
				case res.busy():
					count("invalid refused as busy")
				case res.Code != http.StatusForbidden || !strings.Contains(res.Message, d.denial):
					fail("denied %d/%d: want 403 with %q, got %d %q", i, j, d.denial, res.Code, res.Message)
				default:
					count("invalid denied")
				}
			}
		})
	}
	floodDone := make(chan struct{})
	victimDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-floodDone:
				victimDone <- nil
				return
			default:
			}
			if err := victim.send(ctx); err != nil {
				victimDone <- err
				return
			}
		}
	}()
	peakDone := make(chan int64)
	go func() { peakDone <- samplePeak(cg, floodDone) }()
	floodStart := time.Now()
	wg.Wait()
	floodTook := time.Since(floodStart)
	close(floodDone)
	require.NoError(t, <-victimDone, "a victim request was not answered correctly")
	flooded := victim.take()
	rssPeak := <-peakDone

	// The webhook survived, and said what it did.
	kills, err := cg.OOMKills()
	require.NoError(t, err)
	assert.Zero(t, kills, "the webhook was OOM-killed")
	resp, err := http.Get(wh.ReadyURL)
	require.NoError(t, err, "the webhook is gone")
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Empty(t, failures)
	assert.Equal(t, len(heavy)*floodDocsPerSender, tally["valid decrypted"], "every valid document is decrypted in the end")
	peak, err := cg.Peak()
	require.NoError(t, err)
	assert.Less(t, peak, int64(floodLimit/10*9), "memory stays under GOMEMLIMIT, 90 %% of the limit: the budgets hold it")
	busy, err := wh.Metric(`sops_webhook_budget_refusals_total{lane="large"}`)
	require.NoError(t, err)
	assert.Equal(t, float64(tally["valid refused as busy, then sent again"]+tally["invalid refused as busy"]), busy, "every busy refusal is counted")
	smallBusy, err := wh.Metric(`sops_webhook_budget_refusals_total{lane="small"}`)
	require.NoError(t, err)
	assert.Zero(t, smallBusy, "no small request was refused")

	t.Logf("flood: %d heavy requests in %s: %v", tally["valid decrypted"]+tally["valid refused as busy, then sent again"]+tally["invalid refused as busy"]+tally["invalid denied"], floodTook.Round(time.Millisecond), tally)
	t.Logf("victim unloaded: %d requests, p50 %s, p99 %s", len(unloaded), pct(unloaded, 0.50), pct(unloaded, 0.99))
	t.Logf("victim flooded:  %d requests, p50 %s, p99 %s (p99 %.1f× unloaded)", len(flooded), pct(flooded, 0.50), pct(flooded, 0.99),
		float64(pct(flooded, 0.99))/float64(max(pct(unloaded, 0.99), 1)))
	t.Logf("memory: cgroup peak %s of %s (sampled usage peak %s)", mib(peak), mib(floodLimit), mib(rssPeak))
	require.NoError(t, wh.Stop(), "the webhook exits cleanly after the flood")
}

// floodDoc is a payload with what the webhook must make of it.
type floodDoc struct {
	file  string
	enc   []byte
	plain []byte
	// denial is part of the message a payload that must be denied gets.
	denial string
}

// newFloodDoc encrypts a distinct plaintext of format that makes a
// document just under 1 MiB, as a flood would send.
func newFloodDoc(t *testing.T, format string, r testbed.Recipients) floodDoc {
	t.Helper()
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	var b bytes.Buffer
	if format == "json" {
		b.WriteString("{")
	}
	// sops makes each value about 2.8 times larger: 340 KiB of plaintext
	// come out just under the 1 MiB document limit.
	for i := 0; b.Len() < 340<<10; i++ {
		v := fmt.Sprintf("%s-%06d-%s", hex.EncodeToString(id), i, strings.Repeat("x", 32))
		if format == "json" {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, "%q:%q", fmt.Sprintf("key%06d", i), v)
		} else {
			fmt.Fprintf(&b, "key%06d: %s\n", i, v)
		}
	}
	if format == "json" {
		b.WriteString("}")
	}
	enc := testbed.SopsEncrypt(t, b.Bytes(), format, r)
	require.Less(t, len(enc), 1<<20, "a flood document fits the document limit")
	return floodDoc{file: "app." + format, enc: enc, plain: b.Bytes()}
}

// lastModified matches the timestamp sops authenticates the MAC with.
var lastModified = regexp.MustCompile(`(lastmodified"?: ")\d{4}`)

// tamper changes a document's lastmodified time, so that every value
// decrypts but the MAC fails: the costliest denial.
func tamper(t *testing.T, d floodDoc) floodDoc {
	t.Helper()
	out := lastModified.ReplaceAll(d.enc, []byte("${1}2001"))
	require.NotEqual(t, d.enc, out, "no lastmodified to tamper with")
	d.enc, d.denial = out, "carries no usable MAC"
	return d
}

// check verifies that a response decrypted d: the patch holds a plaintext
// equal to what was encrypted.
func (d floodDoc) check(res reviewResult) error {
	if !res.Allowed {
		return fmt.Errorf("not decrypted: %d %s", res.Code, res.Message)
	}
	got, err := patchedData(res.Patch, d.file)
	if err != nil {
		return err
	}
	var want, have any
	if err := sigsyaml.Unmarshal(d.plain, &want); err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	if err := sigsyaml.Unmarshal(got, &have); err != nil {
		return fmt.Errorf("decrypted %s does not parse: %w", d.file, err)
	}
	if !equalJSON(want, have) {
		return fmt.Errorf("decrypted %s differs from the plaintext", d.file)
	}
	return nil
}

// patchedData returns the value a JSON patch sets for Secret data key
// file.
func patchedData(patch []byte, file string) ([]byte, error) {
	var ops []struct {
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(patch, &ops); err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	for _, op := range ops {
		if op.Path == "/data/"+file {
			return decodeBase64(op.Value)
		}
	}
	return nil, fmt.Errorf("no patch of /data/%s", file)
}

func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// secretReview is an AdmissionReview creating a Secret that holds d.
func secretReview(name string, d floodDoc) []byte {
	s := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team-a"},
		Data:       map[string][]byte{d.file: d.enc},
	}
	if d.enc == nil {
		s.Data = map[string][]byte{"plain": []byte("no sops content")}
	}
	raw, _ := json.Marshal(s)
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID(name),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Secret"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "secrets"},
			Name:      name,
			Namespace: "team-a",
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: raw},
		},
	}
	body, _ := json.Marshal(review)
	return body
}

// reviewResult is what the webhook answered.
type reviewResult struct {
	Allowed bool
	Code    int32
	Message string
	Patch   []byte
}

// busy reports a retryable refusal by one of the budgets.
func (r reviewResult) busy() bool {
	return !r.Allowed && r.Code == http.StatusServiceUnavailable &&
		strings.Contains(r.Message, "the webhook is busy ") && strings.Contains(r.Message, "the request is not at fault: retry it")
}

// sendReview posts an AdmissionReview. An error is a connection error or
// an answer that is neither an AdmissionReview nor a budget's Status.
func sendReview(ctx context.Context, c *http.Client, url string, body []byte) (reviewResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return reviewResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return reviewResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reviewResult{}, err
	}
	if resp.StatusCode != http.StatusOK {
		// The body gate answers with a Status before reading the review.
		var st metav1.Status
		if err := json.Unmarshal(b, &st); err != nil || st.Kind != "Status" {
			return reviewResult{}, fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, b)
		}
		return reviewResult{Code: st.Code, Message: st.Message}, nil
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &review); err != nil || review.Response == nil {
		return reviewResult{}, fmt.Errorf("not an AdmissionReview: %.200s", b)
	}
	r := reviewResult{Allowed: review.Response.Allowed, Patch: review.Response.Patch}
	if st := review.Response.Result; st != nil {
		r.Code, r.Message = st.Code, st.Message
	}
	return r, nil
}

// victim sends small requests in turn and keeps their latencies.
type victim struct {
	url    string
	client *http.Client
	small  []floodDoc
	n      int
	lat    []time.Duration
}

// send sends the next small request and checks its answer: a plain Secret
// is allowed untouched, a small document is decrypted to exactly what
// sops decrypt prints.
func (v *victim) send(ctx context.Context) error {
	v.n++
	d := floodDoc{}
	if v.n%2 == 0 {
		d = v.small[(v.n/2)%len(v.small)]
	}
	start := time.Now()
	res, err := sendReview(ctx, v.client, v.url, secretReview(fmt.Sprintf("victim-%d", v.n), d))
	v.lat = append(v.lat, time.Since(start))
	switch {
	case err != nil:
		return fmt.Errorf("victim %d: %w", v.n, err)
	case !res.Allowed:
		return fmt.Errorf("victim %d refused: %d %s", v.n, res.Code, res.Message)
	case d.enc == nil && len(res.Patch) > 0:
		return fmt.Errorf("victim %d: a plain Secret was patched", v.n)
	case d.enc != nil:
		got, err := patchedData(res.Patch, d.file)
		if err != nil {
			return fmt.Errorf("victim %d: %w", v.n, err)
		}
		if !bytes.Equal(got, d.plain) {
			return fmt.Errorf("victim %d: wrong plaintext", v.n)
		}
	}
	return nil
}

// take returns the latencies so far, sorted, and starts afresh.
func (v *victim) take() []time.Duration {
	out := v.lat
	v.lat = nil
	slices.Sort(out)
	return out
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))].Round(10 * time.Microsecond)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// samplePeak samples the cgroup's memory use every 50 ms until done.
func samplePeak(cg *testbed.MemoryCgroup, done <-chan struct{}) int64 {
	var peak int64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if u, err := cg.Usage(); err == nil {
			peak = max(peak, u)
		}
		select {
		case <-done:
			return peak
		case <-tick.C:
		}
	}
}

// decodeBase64 decodes a Secret data value from a patch: a JSON string of
// base64.
func decodeBase64(v json.RawMessage) ([]byte, error) {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, fmt.Errorf("patch value is not a string: %w", err)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("patch value is not base64: %w", err)
	}
	return b, nil
}

// TestBodyGateOverTLS gives the real binary a body budget smaller than one
// large review and a 1 ms budget wait, and sends large reviews four at a
// time over TLS: each is either decrypted or answered, unread, with the
// body gate's Status (503, "busy reading", retryable), never a connection
// error, and at least one is refused that way.
func TestBodyGateOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs the real webhook binary; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	key := testbed.NewAgeKey(t, false)
	doc := newFloodDoc(t, "yaml", testbed.Recipients{Age: []testbed.AgeKey{key}})
	work := t.TempDir()
	bin, err := testbed.BuildWebhook(work)
	require.NoError(t, err)
	config := filepath.Join(work, "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: team-a\n    age: {identityFile: "+key.IdentityFile+"}\n"), 0o600))
	wh, err := testbed.StartWebhookWith(ctx, bin, testbed.WebhookOptions{Config: config, WorkDir: work, Log: verbose(),
		Args: []string{"--body-budget", "1Mi", "--budget-wait", "1ms"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })

	c := caClient(t, wh.CABundle)
	refused := 0
	for burst := 0; burst < 10 && refused == 0; burst++ {
		results := make(chan error, 4)
		for i := range 4 {
			go func() {
				res, err := sendReview(ctx, c, wh.URL, secretReview(fmt.Sprintf("gate-%d-%d", burst, i), doc))
				switch {
				case err != nil:
					results <- fmt.Errorf("connection error: %w", err)
				case res.busy() && strings.Contains(res.Message, "the webhook is busy reading"):
					results <- errBusy
				default:
					results <- doc.check(res)
				}
			}()
		}
		for range 4 {
			switch err := <-results; {
			case err == errBusy:
				refused++
			default:
				require.NoError(t, err)
			}
		}
	}
	require.Positive(t, refused, "no large body was refused by the gate")
	n, err := wh.Metric(`sops_webhook_budget_refusals_total{lane="bodies"}`)
	require.NoError(t, err)
	assert.EqualValues(t, refused, n, "every refusal is counted")
}

// errBusy marks a budget's refusal among results.
var errBusy = fmt.Errorf("busy")
