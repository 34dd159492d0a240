// Package httptoken checks HTTP header names for httpeffect and its fake
// receiver, so that both refuse the same names.
package httptoken

import "strings"

// Valid reports whether s is an RFC 9110 token, the grammar of a header
// field name.
func Valid(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
