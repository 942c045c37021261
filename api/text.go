package api

import (
	"strconv"
	"unicode"
)

// Printable is s as it may be shown to a person: unchanged when every
// character is printable, else quoted with Go escapes, so that a name
// holding a terminal escape, a line break or a tab cannot forge or break
// the rows of a table (tokend refuses such names, but a client may talk
// to an older tokend).
func Printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return strconv.Quote(s)
		}
	}
	return s
}
