package mutate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestCheckMembers counts members by colons outside strings, escaped
// quotes included, at every depth.
func TestCheckMembers(t *testing.T) {
	members := func(n int, key string) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, `"%s%d":"",`, key, i)
		}
		return strings.TrimSuffix(b.String(), ",")
	}
	// pad makes a body large enough to be read.
	pad := `"pad":"` + strings.Repeat("x", 70<<10) + `"`
	tests := []struct {
		name string
		body string
		want error
	}{
		{"a small body is not read", `{"data":{` + strings.Repeat(`"":"",`, MaxObjectKeys+1) + `"":""}}`, nil},
		{"at the cap", `{` + pad + `,"data":{` + members(MaxObjectKeys, "k") + `}}`, nil},
		{"over the cap", `{` + pad + `,"data":{` + members(MaxObjectKeys+1, "k") + `}}`, errTooManyKeys},
		{"deep", `{` + pad + `,"a":[{"b":{` + members(MaxObjectKeys+1, "k") + `}}]}`, errTooManyKeys},
		{"siblings count apart", `{` + pad + `,"a":{` + members(MaxObjectKeys, "k") + `},"b":{` + members(MaxObjectKeys, "k") + `}}`, nil},
		{"colons in strings", `{` + pad + `,"a":"` + strings.Repeat(`:\"`, MaxObjectKeys+1) + `"}`, nil},
		{"an escaped backslash ends a string", `{` + pad + `,"a":"\\","data":{` + members(MaxObjectKeys+1, "k") + `}}`, errTooManyKeys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, checkMembers([]byte(tt.body)))
		})
	}
}
