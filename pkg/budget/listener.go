package budget

import (
	"net"
	"sync"
	"sync/atomic"
)

// ConnectionCost is what one open connection may hold in memory while its
// request is read, before any of its body is admitted by a lane: the
// goroutine, TLS's record buffers (two of 16 KiB), net/http's buffered
// reader and writer, headers up to MaxHeaderBytes and the first
// FreeBodyBytes of the body, rounded up.
const ConnectionCost = 96 << 10

// MaxHeaderBytes caps a request's headers: the API server sends a few
// hundred bytes, and a bearer token fits many times over. net/http's
// default, 1 MiB a connection, would make headers the largest cost of an
// open connection.
const MaxHeaderBytes = 16 << 10

// FreeBodyBytes is how much of a request body is read without asking a
// lane: the review of a typical Secret fits, so the common request waits
// for nothing, and each open connection may hold this much, which
// ConnectionCost counts.
const FreeBodyBytes = 16 << 10

// ConnectionLimiter counts the connections a listener holds open and
// refuses those beyond a cap. It is safe for concurrent use.
type ConnectionLimiter struct {
	max     int64
	open    atomic.Int64
	refused atomic.Int64
}

// NewConnectionLimiter returns a limiter that holds at most n connections
// open at once (at least 1).
func NewConnectionLimiter(n int) *ConnectionLimiter {
	return &ConnectionLimiter{max: int64(max(n, 1))}
}

// Listen returns l with the cap applied: a connection accepted while max
// are open is closed at once, without a byte read, and counted as refused.
// That is a fast refusal the client sees as a failed call and retries; a
// connection held in the accept queue instead would wait for a slot that
// slow or idle clients may keep for their whole deadline.
func (c *ConnectionLimiter) Listen(l net.Listener) net.Listener {
	return &limitListener{Listener: l, c: c}
}

// Max returns the cap.
func (c *ConnectionLimiter) Max() int64 { return c.max }

// Open returns how many connections are open.
func (c *ConnectionLimiter) Open() int64 { return c.open.Load() }

// Refused returns how many connections were closed for the cap.
func (c *ConnectionLimiter) Refused() int64 { return c.refused.Load() }

type limitListener struct {
	net.Listener
	c *ConnectionLimiter
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.c.open.Add(1) <= l.c.max {
			return &limitConn{Conn: conn, c: l.c}, nil
		}
		l.c.open.Add(-1)
		l.c.refused.Add(1)
		_ = conn.Close()
	}
}

// limitConn gives its slot back when it is first closed.
type limitConn struct {
	net.Conn
	c    *ConnectionLimiter
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.c.open.Add(-1) })
	return err
}
