// Package flagsoff is checked without -sources: ulid.Make is then unknown
// code, and nothing is reported.
package flagsoff

import (
	"example.com/ulid"
	"github.com/effectonce/effectonce/idempotency"
)

var keys = idempotency.KeySpace{Namespace: "flags"}

func key() idempotency.Key {
	return keys.MustKey(idempotency.Str("id", ulid.Make().String()))
}
