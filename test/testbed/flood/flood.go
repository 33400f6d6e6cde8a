package flood

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// The flood's tallies (FloodResult.Tally).
const (
	FloodDecrypted    = "valid decrypted"
	FloodValidBusy    = "valid refused as busy, then sent again"
	FloodDenied       = "invalid denied"
	FloodInvalidBusy  = "invalid refused as busy"
	floodVictimPlains = 8
)

// FloodDoc is a payload of a flood with what the webhook must make of it.
type FloodDoc struct {
	// File is the Secret data key it is sent under; its extension is the
	// format.
	File string
	Enc  []byte
	// Plain is what was encrypted (for a small document: what sops
	// decrypt prints).
	Plain []byte
	// Denial is part of the message of a payload that must be denied.
	Denial string
}

// NewFloodDoc encrypts, with the sops CLI, a plaintext of format ("json"
// or "yaml") that makes a document just under 1 MiB. Each encryption has a
// data key of its own, so every document is distinct, and none is answered
// from the webhook's result cache.
func NewFloodDoc(t testing.TB, format string, r sopskit.Recipients) FloodDoc {
	t.Helper()
	plain := sopskit.PlainOfSize(format, int(float64(1<<20-48<<10)/sopskit.Expansion[format]))
	enc := sopskit.SopsEncrypt(t, plain, format, r)
	if len(enc) >= 1<<20 {
		t.Fatalf("a flood document of %d bytes is over the document limit", len(enc))
	}
	return FloodDoc{File: "app." + format, Enc: enc, Plain: plain}
}

// lastModified matches the timestamp sops authenticates the MAC with.
var lastModified = regexp.MustCompile(`(lastmodified"?: ")\d{4}`)

// TamperMAC changes a document's lastmodified time, so that every value
// decrypts but the MAC does not: the costliest denial.
func TamperMAC(t testing.TB, d FloodDoc) FloodDoc {
	t.Helper()
	out := lastModified.ReplaceAll(d.Enc, []byte("${1}2001"))
	if bytes.Equal(out, d.Enc) {
		t.Fatal("no lastmodified to tamper with")
	}
	d.Enc, d.Denial = out, "carries no usable MAC"
	return d
}

// FloodPayloads are a flood's documents, all distinct so that none is
// answered from the webhook's result cache.
type FloodPayloads struct {
	// Heavy are each heavy sender's valid documents: ~1 MiB ones, even
	// senders JSON, odd ones YAML; the last sender sends DenseValidDoc.
	Heavy [][]FloodDoc
	// Denied are documents that must be denied: ~1 MiB ones with a
	// tampered MAC in JSON and in YAML, and one for a key the webhook
	// lacks; then small hostile ones (HostileDocs).
	Denied []FloodDoc
	// Small are 1 KiB dotenv documents for the victim.
	Small []FloodDoc
}

// NewFloodPayloads encrypts a flood's payloads with the sops CLI, two at a
// time: senders × perSender valid documents for mine, the denied ones (one
// for other), and the victim's small ones.
func NewFloodPayloads(t testing.TB, mine, other sopskit.Recipients, senders, perSender int) FloodPayloads {
	t.Helper()
	p := FloodPayloads{Heavy: make([][]FloodDoc, senders), Denied: make([]FloodDoc, 3)}
	var jobs []func()
	for s := range p.Heavy {
		p.Heavy[s] = make([]FloodDoc, perSender)
		for j := range perSender {
			jobs = append(jobs, func() { p.Heavy[s][j] = NewFloodDoc(t, []string{"json", "yaml"}[s%2], mine) })
		}
	}
	jobs = append(jobs,
		func() { p.Denied[0] = TamperMAC(t, NewFloodDoc(t, "json", mine)) },
		func() { p.Denied[1] = TamperMAC(t, NewFloodDoc(t, "yaml", mine)) },
		func() {
			p.Denied[2] = NewFloodDoc(t, "json", other)
			p.Denied[2].Denial = "no configured key can open it"
		})
	runTwoAtATime(t, jobs)
	p.Denied = append(p.Denied, HostileDocs(t, mine, other)...)
	p.Heavy = append(p.Heavy, []FloodDoc{DenseValidDoc(t, mine)})
	for i := range floodVictimPlains {
		plain := fmt.Sprintf("VICTIM_%d=%s\n", i, strings.Repeat("v", 1000))
		enc := sopskit.SopsEncrypt(t, []byte(plain), "dotenv", mine)
		p.Small = append(p.Small, FloodDoc{File: "app.env", Enc: enc, Plain: sopskit.SopsDecrypt(t, enc, "dotenv", mine)})
	}
	return p
}

// HostileDocs are small documents, each built on a real encrypted one,
// that cost sops far more than their size: YAML ones that cost its loader
// that much before any key is asked (an alias bomb in a second document,
// unbounded; 6,000 equal keys, 3 GB in yaml's duplicate check; a flow list
// of one-letter values just under the items cap, about 130 KB that parse
// into 65,000 nodes, and one over it), and a valid JSON document of 2,000
// nested lists written compactly (9 KB), which sops would print as 2 MB of
// indentation (decrypt.MaxDocumentDepth).
func HostileDocs(t testing.TB, mine, other sopskit.Recipients) []FloodDoc {
	t.Helper()
	base := sopskit.SopsEncrypt(t, []byte("user: app\npassword: hostile\n"), "yaml", mine)
	forOther := sopskit.SopsEncrypt(t, []byte("user: app\npassword: hostile\n"), "yaml", other)
	var bomb strings.Builder
	bomb.WriteString("---\nl0: &l0 [a, b, c, d, e, f, g, h, i]\n")
	for i := 1; i < 12; i++ {
		fmt.Fprintf(&bomb, "l%d: &l%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d,", i-1), 9), ","))
	}
	// A flow list of n one-letter values counts n items (decrypt.Items).
	list := func(n int) string { return "zz: [" + strings.Repeat("a,", n) + "a]\n" }
	doc := func(enc []byte, extra, denial string) FloodDoc {
		return FloodDoc{File: "app.yaml", Enc: append(bytes.Clone(enc), extra...), Denial: denial}
	}
	// The MAC covers the values, not the blanks between them.
	var deep bytes.Buffer
	const depth = 2000
	nested := sopskit.SopsEncrypt(t, []byte(`{"k":`+strings.Repeat("[", depth)+`"x"`+strings.Repeat("]", depth)+`}`), "json", mine)
	if err := json.Compact(&deep, nested); err != nil {
		t.Fatalf("compacting the nested document: %v", err)
	}
	return []FloodDoc{
		{File: "app.json", Enc: deep.Bytes(), Denial: "levels deep"},
		doc(base, bomb.String(), "YAML alias"),
		doc(base, "zz:\n"+strings.Repeat("  a: b\n", 6000), "does not parse"),
		doc(forOther, list(64_000), "no configured key can open it"),
		doc(base, list(70_000), "limited to 65536"),
	}
}

// Valid is how many valid documents the payloads hold.
func (p FloodPayloads) Valid() int {
	n := 0
	for _, docs := range p.Heavy {
		n += len(docs)
	}
	return n
}

// DenseValidDoc is the costliest valid document the items cap lets through
// (decrypt.Items, TestItemCost): one flow list of 65,000 one-letter
// unencrypted values, about 130 KB. sops writes the list in block style;
// written as a flow list it holds the same values, so its MAC holds.
func DenseValidDoc(t testing.TB, r sopskit.Recipients) FloodDoc {
	t.Helper()
	const n = 65_000
	block := strings.Repeat("    - a\n", n)
	plain := []byte("secret: dense\nlist_unencrypted:\n" + block)
	enc := sopskit.SopsEncrypt(t, plain, "yaml", r, "--unencrypted-suffix", "_unencrypted")
	flow := bytes.Replace(enc, []byte(":\n"+block), []byte(": ["+strings.TrimSuffix(strings.Repeat("a,", n), ",")+"]\n"), 1)
	if bytes.Equal(flow, enc) {
		t.Fatal("sops did not write the list in block style")
	}
	return FloodDoc{File: "app.yaml", Enc: flow, Plain: plain}
}

// runTwoAtATime runs jobs on two goroutines. A job that fails t (a
// CommandTB panics, a testing.T exits the goroutine) stops the rest, and
// the failure is raised on the caller's goroutine.
func runTwoAtATime(t testing.TB, jobs []func()) {
	t.Helper()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		next    int
		failure any
		failed  bool
	)
	take := func() func() {
		mu.Lock()
		defer mu.Unlock()
		if failed || next == len(jobs) {
			return nil
		}
		next++
		return jobs[next-1]
	}
	for range 2 {
		wg.Go(func() {
			done := false
			defer func() {
				if !done {
					mu.Lock()
					failed, failure = true, recover()
					mu.Unlock()
				}
			}()
			for job := take(); job != nil; job = take() {
				job()
			}
			done = true
		})
	}
	wg.Wait()
	if failed {
		t.Fatalf("encrypting the flood's payloads failed: %v", failure)
	}
}

// SecretReview is an AdmissionReview creating Secret name that holds d, or
// a plain value when d has no Enc.
func SecretReview(name string, d FloodDoc) []byte {
	s := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team-a"},
		Data:       map[string][]byte{d.File: d.Enc},
	}
	if d.Enc == nil {
		s.Data = map[string][]byte{"plain": []byte("no sops content")}
	}
	raw, _ := json.Marshal(s)
	body, _ := json.Marshal(admissionv1.AdmissionReview{
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
	})
	return body
}

// ReviewResult is what the webhook answered.
type ReviewResult struct {
	Allowed bool
	Code    int32
	Message string
	Patch   []byte
}

// Busy reports a retryable refusal by one of the webhook's budgets.
func (r ReviewResult) Busy() bool {
	return !r.Allowed && r.Code == http.StatusServiceUnavailable &&
		strings.Contains(r.Message, "the webhook is busy ") && strings.Contains(r.Message, "the request is not at fault: retry it")
}

// SendReview posts an AdmissionReview. An error is a connection error or
// an answer that is neither an AdmissionReview nor a budget's Status.
func SendReview(ctx context.Context, c *http.Client, url string, body []byte) (ReviewResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return ReviewResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return ReviewResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return ReviewResult{}, err
	}
	if resp.StatusCode != http.StatusOK {
		// The body gate answers with a Status before reading the review.
		var st metav1.Status
		if err := json.Unmarshal(b, &st); err != nil || st.Kind != "Status" {
			return ReviewResult{}, fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, b)
		}
		return ReviewResult{Code: st.Code, Message: st.Message}, nil
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &review); err != nil || review.Response == nil {
		return ReviewResult{}, fmt.Errorf("not an AdmissionReview: %.200s", b)
	}
	r := ReviewResult{Allowed: review.Response.Allowed, Patch: review.Response.Patch}
	if st := review.Response.Result; st != nil {
		r.Code, r.Message = st.Code, st.Message
	}
	return r, nil
}

// Check verifies that res decrypted d: the patch holds a plaintext equal,
// as data, to what was encrypted.
func (d FloodDoc) Check(res ReviewResult) error {
	if !res.Allowed {
		return fmt.Errorf("not decrypted: %d %s", res.Code, res.Message)
	}
	got, err := PatchedData(res.Patch, d.File)
	if err != nil {
		return err
	}
	var want, have any
	if err := sigsyaml.Unmarshal(d.Plain, &want); err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	if err := sigsyaml.Unmarshal(got, &have); err != nil {
		return fmt.Errorf("decrypted %s does not parse: %w", d.File, err)
	}
	x, err1 := json.Marshal(want)
	y, err2 := json.Marshal(have)
	if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
		return fmt.Errorf("decrypted %s differs from the plaintext", d.File)
	}
	return nil
}

// PatchedData returns the value a JSON patch sets for Secret data key file.
func PatchedData(patch []byte, file string) ([]byte, error) {
	var ops []struct {
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(patch, &ops); err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	for _, op := range ops {
		if op.Path != "/data/"+file {
			continue
		}
		var s string
		if err := json.Unmarshal(op.Value, &s); err != nil {
			return nil, fmt.Errorf("patch value is not a string: %w", err)
		}
		return base64.StdEncoding.DecodeString(s)
	}
	return nil, fmt.Errorf("no patch of /data/%s", file)
}

// Victim sends small requests in turn and keeps their latencies.
type Victim struct {
	url    string
	client *http.Client
	small  []FloodDoc
	n      int
	lat    []time.Duration
}

// NewVictim returns a victim of the webhook at url, sending the small
// documents and plain Secrets in turn.
func NewVictim(url string, c *http.Client, small []FloodDoc) *Victim {
	return &Victim{url: url, client: c, small: small}
}

// Send sends the next small request and checks its answer: a plain Secret
// is allowed untouched, a small document is decrypted to exactly what sops
// decrypt prints.
func (v *Victim) Send(ctx context.Context) error {
	v.n++
	d := FloodDoc{}
	if v.n%2 == 0 {
		d = v.small[(v.n/2)%len(v.small)]
	}
	start := time.Now()
	res, err := SendReview(ctx, v.client, v.url, SecretReview(fmt.Sprintf("victim-%d", v.n), d))
	v.lat = append(v.lat, time.Since(start))
	switch {
	case err != nil:
		return fmt.Errorf("victim %d: %w", v.n, err)
	case !res.Allowed:
		return fmt.Errorf("victim %d refused: %d %s", v.n, res.Code, res.Message)
	case d.Enc == nil && len(res.Patch) > 0:
		return fmt.Errorf("victim %d: a plain Secret was patched", v.n)
	case d.Enc != nil:
		got, err := PatchedData(res.Patch, d.File)
		if err != nil {
			return fmt.Errorf("victim %d: %w", v.n, err)
		}
		if !bytes.Equal(got, d.Plain) {
			return fmt.Errorf("victim %d: wrong plaintext", v.n)
		}
	}
	return nil
}

// Take returns the latencies so far, sorted, and starts afresh.
func (v *Victim) Take() []time.Duration {
	out := v.lat
	v.lat = nil
	slices.Sort(out)
	return out
}

// Flood sends FloodPayloads to a webhook over HTTPS: one goroutine per heavy
// sender, each document once, sent again after a busy refusal up to
// BusyRetries times; one per denied document, DeniedSends times.
type Flood struct {
	URL         string
	Client      func() *http.Client
	Payloads    FloodPayloads
	BusyRetries int
	DeniedSends int
}

// FloodResult is what a flood saw.
type FloodResult struct {
	// Tally counts outcomes by the Flood* names.
	Tally map[string]int
	// Failures are answers that were none of the expected ones, and
	// connection errors.
	Failures []string
	Took     time.Duration
	// Victim are the victim's latencies during the flood, sorted; VictimErr
	// is its first wrong answer, which stops it.
	Victim    []time.Duration
	VictimErr error
}

// Run floods the webhook while victim, if not nil, sends until the flood
// ends. It stops by itself: every sender's count is bounded.
func (f Flood) Run(ctx context.Context, victim *Victim) FloodResult {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		res     = FloodResult{Tally: map[string]int{}}
		answers []heavyAnswer
	)
	fail := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		res.Failures = append(res.Failures, fmt.Sprintf(format, a...))
	}
	count := func(what string) {
		mu.Lock()
		defer mu.Unlock()
		res.Tally[what]++
	}
	// The reviews are encoded before the flood starts, so that the senders
	// spend the machine's CPU on sending, not on encoding 1 MiB objects.
	heavy := make([][][]byte, len(f.Payloads.Heavy))
	for i, docs := range f.Payloads.Heavy {
		for j, d := range docs {
			heavy[i] = append(heavy[i], SecretReview(fmt.Sprintf("heavy-%d-%d", i, j), d))
		}
	}
	denied := make([][]byte, len(f.Payloads.Denied))
	for i, d := range f.Payloads.Denied {
		denied[i] = SecretReview(fmt.Sprintf("denied-%d", i), d)
	}
	for i, docs := range f.Payloads.Heavy {
		wg.Go(func() {
			c := f.Client()
			for j, d := range docs {
				for attempt := 0; ; attempt++ {
					r, err := SendReview(ctx, c, f.URL, heavy[i][j])
					if err != nil {
						fail("heavy %d/%d: %v", i, j, err)
						break
					}
					if r.Busy() && attempt < f.BusyRetries {
						count(FloodValidBusy)
						time.Sleep(100 * time.Millisecond)
						continue
					}
					// Checked once the flood is over, so that the
					// harness's own parsing of 1 MiB plaintexts does not
					// compete with the webhook for the CPU it measures.
					mu.Lock()
					answers = append(answers, heavyAnswer{i, j, d, r})
					mu.Unlock()
					break
				}
			}
		})
	}
	for i, d := range f.Payloads.Denied {
		wg.Go(func() {
			c := f.Client()
			for j := range f.DeniedSends {
				r, err := SendReview(ctx, c, f.URL, denied[i])
				switch {
				case err != nil:
					fail("denied %d/%d: %v", i, j, err)
				case r.Busy():
					count(FloodInvalidBusy)
				case r.Code != http.StatusForbidden || !strings.Contains(r.Message, d.Denial):
					fail("denied %d/%d: want 403 with %q, got %d %q", i, j, d.Denial, r.Code, r.Message)
				default:
					count(FloodDenied)
				}
			}
		})
	}
	done := make(chan struct{})
	victimDone := make(chan error, 1)
	go func() {
		for victim != nil {
			select {
			case <-done:
				victimDone <- nil
				return
			default:
			}
			if err := victim.Send(ctx); err != nil {
				victimDone <- err
				return
			}
		}
		victimDone <- nil
	}()
	start := time.Now()
	wg.Wait()
	res.Took = time.Since(start)
	close(done)
	res.VictimErr = <-victimDone
	if victim != nil {
		res.Victim = victim.Take()
	}
	for _, a := range answers {
		if err := a.doc.Check(a.res); err != nil {
			fail("heavy %d/%d (%s): %v", a.sender, a.n, a.doc.File, err)
		} else {
			count(FloodDecrypted)
		}
	}
	return res
}

// heavyAnswer is the webhook's final answer to heavy sender's n-th
// document.
type heavyAnswer struct {
	sender, n int
	doc       FloodDoc
	res       ReviewResult
}

// Percentile returns the p-th percentile of sorted latencies.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}
