package main

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAlternate: the concurrency-1 measurement sends to both servers in
// turn and charges each the time of its own requests only.
func TestAlternate(t *testing.T) {
	const slow = 5 * time.Millisecond
	var served [2]atomic.Int64
	server := func(i int, delay time.Duration) *httptest.Server {
		return httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			served[i].Add(1)
			time.Sleep(delay)
			_, _ = w.Write([]byte(`{"response":{"allowed":true}}`))
		}))
	}
	fast, slowSrv := server(0, 0), server(1, slow)
	defer fast.Close()
	defer slowSrv.Close()
	// Both test servers share one certificate.
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fast.Certificate().Raw})
	pts := alternate(context.Background(), ca, [2]target{{"fast", fast.URL, os.Getpid()}, {"slow", slowSrv.URL, os.Getpid()}}, []byte(`{}`), 200*time.Millisecond)

	n := [2]int{len(pts[0].lat), len(pts[1].lat)}
	require.NotZero(t, n[0])
	assert.InDelta(t, n[0], n[1], 1, "the servers were not sent to in turn")
	assert.InDelta(t, served[0].Load(), served[1].Load(), 1, "warm-up included")
	assert.Zero(t, pts[0].errors+pts[1].errors)
	assert.GreaterOrEqual(t, pts[1].took, time.Duration(n[1])*slow, "the slow server was not charged its own time")
	assert.Less(t, pts[0].took, pts[1].took, "the fast server was charged the slow one's time")
	assert.Greater(t, pts[0].rps, pts[1].rps)
	assert.Equal(t, 1, pts[0].concurrency)
}
