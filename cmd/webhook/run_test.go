package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestStdLogWriter(t *testing.T) {
	for _, level := range []string{"info", "debug"} {
		t.Run(level, func(t *testing.T) {
			var out strings.Builder
			w := stdLogWriter{newLogger(level, &out)}
			_, _ = w.Write([]byte("http: TLS handshake error from 10.0.0.9:4711: caller refused: no client certificate\n"))
			_, _ = w.Write([]byte("http: Accept error: too many open files\n"))
			assert.Contains(t, out.String(), `"msg":"http: Accept error: too many open files"`)
			assert.Equal(t, level == "debug", strings.Contains(out.String(), "TLS handshake error"),
				"a refused caller's handshake is logged at debug level only: %s", out.String())
		})
	}
}
