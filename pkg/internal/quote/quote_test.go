package quote

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCapped(t *testing.T) {
	tests := []struct {
		name, in string
		max      int
		want     string
	}{
		{"short", "db:password:", 100, `"db:password:"`},
		{"exactly the bound", "abcd", 4, `"abcd"`},
		{"cut", "abcdef", 4, `"abcd..."`},
		{"cut at a rune boundary", "ab€cd", 4, `"ab..."`},
		{"control characters escaped", "a\nb\x00\"", 100, `"a\nb\x00\""`},
		{"long input bounded", strings.Repeat("x", 10000), 8, `"xxxxxxxx..."`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, Capped(tt.in, tt.max))
		})
	}
}
