package decrypt

import (
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// reasonConstants returns the value of every constant of type Reason that
// the package's source declares, read from the source itself, so a reason
// added without a row in the table is found.
func reasonConstants(t *testing.T) map[string]Reason {
	t.Helper()
	fset := gotoken.NewFileSet()
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	out := map[string]Reason{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != gotoken.CONST {
				continue
			}
			for _, s := range g.Specs {
				v := s.(*ast.ValueSpec)
				if id, ok := v.Type.(*ast.Ident); !ok || id.Name != "Reason" {
					continue
				}
				for i, n := range v.Names {
					lit, ok := v.Values[i].(*ast.BasicLit)
					require.True(t, ok, "%s: not a string literal", n.Name)
					s, err := strconv.Unquote(lit.Value)
					require.NoError(t, err)
					out[n.Name] = Reason(s)
				}
			}
		}
	}
	return out
}

func TestEveryReasonHasItsOwnLabel(t *testing.T) {
	consts := reasonConstants(t)
	require.GreaterOrEqual(t, len(consts), 14, "the Reason constants were not found")
	snake := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	byLabel := map[string]string{SuccessLabel: "success"}
	for name, r := range consts {
		info, ok := reasons[r]
		if !assert.True(t, ok, "%s has no row in the reasons table", name) {
			continue
		}
		assert.Regexp(t, snake, info.label, "%s: label is not snake_case", name)
		if other, dup := byLabel[info.label]; dup {
			t.Errorf("%s and %s share the label %q", name, other, info.label)
		}
		byLabel[info.label] = name
		assert.Equal(t, info.label, r.Label())
	}
	assert.Len(t, reasons, len(consts), "the table has rows for reasons that are not constants")
	assert.ElementsMatch(t, Reasons(), func() []Reason {
		var rs []Reason
		for _, r := range consts {
			rs = append(rs, r)
		}
		return rs
	}())
}

func TestErrorClassTable(t *testing.T) {
	// The request's faults: retrying the same request fails the same way.
	for _, r := range []Reason{ReasonTooLarge, ReasonMalformed, ReasonNoKey, ReasonNotGranted, ReasonCorrupt, ReasonMAC, ReasonNoMAC, ReasonUnsupported, ReasonNoIndex, ReasonNotIndexed, ReasonBadIndex, ReasonTooMuchWork} {
		assert.False(t, r.Retryable(), "%s", r.Label())
	}
	// The webhook's or a dependency's: the same request can pass later.
	for _, r := range []Reason{ReasonUnavailable, ReasonPolicyCheck, ReasonTimeout, ReasonInternal} {
		assert.True(t, r.Retryable(), "%s", r.Label())
	}
	assert.Equal(t, "internal", Reason("something new").Label())
	assert.True(t, Reason("something new").Retryable())
}
