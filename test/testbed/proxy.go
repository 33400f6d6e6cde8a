package testbed

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// ServiceProxy stands in for a Kubernetes Service in front of webhook
// replicas: a TCP proxy on loopback that sends each new connection to the
// next ready backend, round robin. Readiness is each backend's /readyz,
// polled like a kubelet readiness probe, so a replica that reports not
// ready stops getting new connections, as its endpoint would be removed.
type ServiceProxy struct {
	// Addr is host:port to send clients to.
	Addr string

	ln       net.Listener
	backends []atomic.Pointer[Webhook]
	ready    []atomic.Bool
	next     atomic.Uint64
	// Conns counts the connections sent to each backend.
	Conns []atomic.Int64

	stop chan struct{}
	wg   sync.WaitGroup
}

// readinessPeriod is how often the proxy polls each backend's /readyz.
const readinessPeriod = 50 * time.Millisecond

// StartServiceProxy starts a proxy in front of backends.
func StartServiceProxy(backends ...*Webhook) (*ServiceProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &ServiceProxy{
		Addr: ln.Addr().String(), ln: ln, backends: make([]atomic.Pointer[Webhook], len(backends)),
		ready: make([]atomic.Bool, len(backends)), Conns: make([]atomic.Int64, len(backends)),
		stop: make(chan struct{}),
	}
	for i, b := range backends {
		p.backends[i].Store(b)
	}
	for i := range backends {
		p.probe(i)
		p.wg.Add(1)
		go p.probeLoop(i)
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Replace puts backend i's replacement in place, as a restarted pod's new
// endpoint; it gets traffic once its /readyz answers.
func (p *ServiceProxy) Replace(i int, w *Webhook) {
	p.ready[i].Store(false)
	p.backends[i].Store(w)
}

// Close stops accepting and probing; open connections are left to end.
func (p *ServiceProxy) Close() error {
	close(p.stop)
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *ServiceProxy) probe(i int) {
	c := http.Client{Timeout: readinessPeriod * 4}
	resp, err := c.Get(p.backends[i].Load().ReadyURL)
	ok := err == nil && resp.StatusCode == http.StatusOK
	if err == nil {
		resp.Body.Close()
	}
	p.ready[i].Store(ok)
}

func (p *ServiceProxy) probeLoop(i int) {
	defer p.wg.Done()
	t := time.NewTicker(readinessPeriod)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.probe(i)
		}
	}
}

func (p *ServiceProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.serve(c)
	}
}

// serve connects c to a ready backend. Like a Service, it does not retry a
// backend that accepted: only a failed dial moves on to the next one.
func (p *ServiceProxy) serve(c net.Conn) {
	defer c.Close()
	n := len(p.backends)
	for range n {
		i := int(p.next.Add(1) % uint64(n))
		if !p.ready[i].Load() {
			continue
		}
		b, err := net.DialTimeout("tcp", p.backends[i].Load().Addr, time.Second)
		if err != nil {
			continue
		}
		p.Conns[i].Add(1)
		pipe(c, b)
		return
	}
}

// pipe copies both ways until either side closes.
func pipe(a, b net.Conn) {
	defer b.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok && (err == nil || errors.Is(err, net.ErrClosed)) {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}
