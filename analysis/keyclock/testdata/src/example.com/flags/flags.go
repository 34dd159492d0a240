// Package flags reports only with -headers=X-Once-Key and
// -sources=example.com/ulid.Make, which TestAnalyzer sets.
package flags

import (
	"net/http"

	"github.com/google/uuid"

	"example.com/ulid"
	"github.com/effectonce/effectonce/idempotency"
)

var keys = idempotency.KeySpace{Namespace: "flags"}

func send(req *http.Request) {
	req.Header.Set("x-once-key", uuid.NewString()) // want `^idempotency key derived from randomness: uuid.NewString → http.Header.Set\("x-once-key"\)$`
	req.Header.Set("X-Twice-Key", uuid.NewString())
}

func key() idempotency.Key { // want key:`^result from a -sources function`
	return keys.MustKey(idempotency.Str("id", ulid.Make().String())) // want `^idempotency key derived from a -sources function: ulid.Make → ulid.ULID.String\(\) → idempotency.Str\("id"\)$`
}
