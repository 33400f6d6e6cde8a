package budget

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConnectionLimiter holds the cap's connections open: the next one is
// closed without a byte, counted as refused, and a closed connection's
// slot is taken by the next.
func TestConnectionLimiter(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	lim := NewConnectionLimiter(2)
	ln := lim.Listen(inner)
	defer ln.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	served := []net.Conn{<-accepted, <-accepted}
	assert.EqualValues(t, 2, lim.Open())

	third := dial()
	require.NoError(t, third.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = third.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "a connection past the cap is closed at once")
	assert.EqualValues(t, 1, lim.Refused())
	assert.EqualValues(t, 2, lim.Open())

	require.NoError(t, served[0].Close())
	_ = served[0].Close() // closing twice gives back one slot
	assert.EqualValues(t, 1, lim.Open())
	dial()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("a freed slot is not taken")
	}
	assert.EqualValues(t, 2, lim.Open())
}
