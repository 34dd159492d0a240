package pgguard

import (
	"reflect"
	"strings"
	"unicode/utf8"
)

// maxIdentLen is PostgreSQL's identifier limit in bytes (NAMEDATALEN - 1).
// Longer names are truncated by the server, so two long names could silently
// become one.
const maxIdentLen = 63

// checkIdent validates one identifier. Quoting happens elsewhere, always
// with pgx.Identifier.Sanitize; this rejects only what quoting cannot carry.
func checkIdent(field, name string) error {
	var reason string
	switch {
	case name == "":
		reason = "empty"
	case len(name) > maxIdentLen:
		reason = "longer than 63 bytes (PostgreSQL would truncate it)"
	case strings.IndexByte(name, 0) >= 0:
		reason = "contains a NUL byte"
	case !utf8.ValidString(name):
		reason = "not valid UTF-8"
	default:
		return nil
	}
	return &IdentifierError{Field: field, Name: name, Reason: reason}
}

// quoteLiteral renders s as an SQL string literal. Single quotes are doubled;
// a string containing a backslash uses the E” form with backslashes doubled,
// which reads the same whatever standard_conforming_strings says. The caller
// rejects NUL bytes and invalid UTF-8 first.
func quoteLiteral(s string) string {
	q := strings.ReplaceAll(s, `'`, `''`)
	if strings.Contains(q, `\`) {
		return `E'` + strings.ReplaceAll(q, `\`, `\\`) + `'`
	}
	return `'` + q + `'`
}

// isNil reports whether db is nil or an interface holding a nil pointer (a
// nil *pgxpool.Pool passed as a DBTX).
func isNil(db DBTX) bool {
	if db == nil {
		return true
	}
	v := reflect.ValueOf(db)
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}
