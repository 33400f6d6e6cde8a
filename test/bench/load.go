package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
)

// point is one measured load point.
type point struct {
	scenario, target string
	concurrency      int
	rps              float64
	p50, p99, p999   time.Duration
	errors           int64

	lat  []time.Duration // sorted
	took time.Duration
	// roundRPS is the throughput of each round merged into the point, in
	// the order they ran.
	roundRPS []float64
	// cpu is the CPU time the server process spent during the measured
	// requests (not the warm-up).
	cpu time.Duration
}

// cpuPerRequest is the server's CPU time per measured request.
func (p point) cpuPerRequest() time.Duration {
	if len(p.lat) == 0 {
		return 0
	}
	return p.cpu / time.Duration(len(p.lat))
}

// merge combines rounds of the same load point.
func merge(rounds []point) point {
	out := rounds[0]
	out.lat, out.took, out.errors, out.roundRPS, out.cpu = nil, 0, 0, nil, 0
	for _, r := range rounds {
		out.lat = append(out.lat, r.lat...)
		out.took += r.took
		out.errors += r.errors
		out.cpu += r.cpu
		out.roundRPS = append(out.roundRPS, float64(len(r.lat))/r.took.Seconds())
	}
	slices.Sort(out.lat)
	out.rps = float64(len(out.lat)) / out.took.Seconds()
	out.p50, out.p99, out.p999 = flood.Percentile(out.lat, 0.50), flood.Percentile(out.lat, 0.99), flood.Percentile(out.lat, 0.999)
	return out
}

// httpsClient trusts only caPEM, presents the test bed's API-server client
// certificate (both servers require it) and keeps up to conns connections
// open.
func httpsClient(caPEM []byte, conns int) *http.Client {
	id, err := testbed.LoadAPIServerClient()
	if err != nil {
		panic(err) // made before any server started; it cannot fail now
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     id.TLSConfig(caPEM),
		MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
	}}
}

// sender posts body to url over client and returns the latency, and
// whether the answer was 200 with "allowed":true.
func sender(ctx context.Context, client *http.Client, url string, body []byte) func() (time.Duration, bool) {
	return func() (time.Duration, bool) {
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return time.Since(start), resp.StatusCode == http.StatusOK && bytes.Contains(b, []byte(`"allowed":true`))
	}
}

// load posts body to url from conc goroutines for d after a warm-up of d/5,
// and returns throughput, latency percentiles and the CPU time of process
// pid, the server, while it measured. A response that is not 200 with
// "allowed":true counts as an error.
func load(ctx context.Context, caPEM []byte, url string, pid int, body []byte, conc int, d time.Duration) point {
	client := httpsClient(caPEM, conc)
	defer client.CloseIdleConnections()
	send := sender(ctx, client, url, body)
	run := func(d time.Duration, record bool) ([]time.Duration, int64, time.Duration) {
		var (
			mu   sync.Mutex
			lat  []time.Duration
			errs atomic.Int64
			wg   sync.WaitGroup
		)
		deadline := time.Now().Add(d)
		start := time.Now()
		for range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for time.Now().Before(deadline) && ctx.Err() == nil {
					l, ok := send()
					if !ok {
						errs.Add(1)
						continue
					}
					if record {
						mine = append(mine, l)
					}
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return lat, errs.Load(), time.Since(start)
	}
	run(d/5, false)
	cpu := processCPU(pid)
	lat, errs, took := run(d, true)
	cpu = processCPU(pid) - cpu
	slices.Sort(lat)
	return merge([]point{{concurrency: conc, lat: lat, took: took, errors: errs, cpu: cpu}})
}

// target is a server the load generator measures.
type target struct {
	name, url string
	pid       int
}

// alternate measures two servers at concurrency 1 together: one client
// sends to each in turn, for d after a warm-up of d/5, the first of each
// pair taking turns, so that from one request to the next both meet the
// same machine. Each point's time is the time its own requests took, so
// its throughput is what a client alone would get (1 / mean latency);
// its CPU is the server's over the measured requests, as in load.
func alternate(ctx context.Context, caPEM []byte, targets [2]target, body []byte, d time.Duration) [2]point {
	clients := [2]*http.Client{httpsClient(caPEM, 1), httpsClient(caPEM, 1)}
	return alternateWith(ctx, clients, targets, body, d)
}

// alternateWith is alternate with a client for each target.
func alternateWith(ctx context.Context, clients [2]*http.Client, targets [2]target, body []byte, d time.Duration) [2]point {
	var sends [2]func() (time.Duration, bool)
	for i, t := range targets {
		defer clients[i].CloseIdleConnections()
		sends[i] = sender(ctx, clients[i], t.url, body)
	}
	for end := time.Now().Add(d / 5); time.Now().Before(end) && ctx.Err() == nil; {
		sends[0]()
		sends[1]()
	}
	var (
		pts [2]point
		cpu [2]time.Duration
	)
	for i, t := range targets {
		cpu[i] = processCPU(t.pid)
	}
	for k, end := 0, time.Now().Add(d); time.Now().Before(end) && ctx.Err() == nil; k++ {
		for j := range 2 {
			i := (j + k) % 2
			l, ok := sends[i]()
			if !ok {
				pts[i].errors++
				continue
			}
			pts[i].lat = append(pts[i].lat, l)
			pts[i].took += l
		}
	}
	for i, t := range targets {
		pts[i].concurrency, pts[i].cpu = 1, processCPU(t.pid)-cpu[i]
		pts[i] = merge([]point{pts[i]})
	}
	return pts
}

// processCPU is the user and system CPU time process pid has used, from
// /proc/<pid>/stat, in the kernel's clock ticks of 10 ms: per request it
// is summed over seconds of load, so the tick is far finer than the figure.
// An unreadable process counts 0.
func processCPU(pid int) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are the 14th and 15th of the line.
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// process is a server started for the load tests.
type process struct {
	cmd  *exec.Cmd
	done chan error
}

// startProcess runs bin with args and waits until readyURL answers 200.
func startProcess(bin string, args []string, readyURL string) (*process, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(readyURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
	}
	p.stop()
	return nil, fmt.Errorf("%s not ready", bin)
}

func (p *process) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
	}
}

// goroutines reads go_goroutines from a Prometheus endpoint.
func goroutines(metricsURL string) int {
	resp, err := http.Get(metricsURL)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go_goroutines "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return 0
}

// handshakeCost measures what requiring the API server's client
// certificate costs the no-op baseline: the no-op as the benchmarks run it
// (withCert) against a second one on the same certificate without
// --client-ca-file, at concurrency 1 in alternating rounds, once with a new
// TLS connection per request (every request pays the handshake and the
// certificate's verification) and once with the connections kept alive, as
// the API server keeps them. Each ratio is with certificate to without.
func handshakeCost(ctx context.Context, noop, certDir string, caPEM []byte, withCert target, body []byte, d time.Duration, rounds int) ([]ratio, error) {
	port, health := freePort(), freePort()
	open, err := startProcess(noop, []string{"--cert-dir", certDir, "--port", strconv.Itoa(port), "--health-probe-bind-address", "127.0.0.1:" + strconv.Itoa(health)},
		"http://127.0.0.1:"+strconv.Itoa(health)+"/readyz")
	if err != nil {
		return nil, err
	}
	defer open.stop()
	targets := [2]target{{"no-op without client certificate", fmt.Sprintf("https://127.0.0.1:%d/mutate", port), open.cmd.Process.Pid}, withCert}
	var out []ratio
	for _, keepAlive := range []bool{false, true} {
		var measured [2][]point
		for range rounds {
			var clients [2]*http.Client
			for i := range clients {
				clients[i] = httpsClient(caPEM, 1)
				clients[i].Transport.(*http.Transport).DisableKeepAlives = !keepAlive
			}
			pair := alternateWith(ctx, clients, targets, body, d/time.Duration(rounds))
			measured[0], measured[1] = append(measured[0], pair[0]), append(measured[1], pair[1])
		}
		name := "a new TLS connection per request"
		if keepAlive {
			name = "connections kept alive (as the API server keeps them)"
		}
		out = append(out, ratio{scenario: name, concurrency: 1, noop: merge(measured[0]), wh: merge(measured[1])})
	}
	return out, nil
}
