// Package quote renders request-supplied text (a key name, a values path, a
// recipient) for an error message: cut to a bound and quoted, so a hostile
// string can neither flood a message nor break its layout. Only public
// structure is ever passed to it, never a value.
package quote

import (
	"strconv"
	"unicode/utf8"
)

// Capped returns s cut to at most maxBytes bytes (at a rune boundary, with
// "..." marking the cut) and quoted as a Go string literal.
func Capped(s string, maxBytes int) string {
	if len(s) > maxBytes {
		cut := maxBytes
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return strconv.Quote(s)
}
