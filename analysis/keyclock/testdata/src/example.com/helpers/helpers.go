// Package helpers hides the clock and the random generator in helper
// functions; summaries carry them to the key.
package helpers

import (
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/effectonce/effectonce/idempotency"
)

var keys = idempotency.KeySpace{Namespace: "billing.invoice"}

// period is two calls away from the key that uses it.
func period() string { // want period:`^result from the clock: time.Now → .Format$`
	return time.Now().Format("2006-01")
}

// Period is exported: importing packages learn its fact.
func Period() string { // want Period:`^result from the clock: time.Now → .Format → period\(\)$`
	return period()
}

func invoiceKey(customer string) idempotency.Key { // want invoiceKey:`^result from the clock: .* → idempotency.KeySpace.MustKey; param 0 to result; param 0 to sink: idempotency.Str\("customer"\)$`
	return keys.MustKey(idempotency.Str("customer", customer), idempotency.Str("period", Period())) // want `^idempotency key derived from the clock: time.Now → .Format → period\(\) → Period\(\) → idempotency.Str\("period"\)$`
}

// setKey passes its parameter to a sink: callers are checked.
func setKey(req *http.Request, key string) { // want setKey:`^param 1 to sink: http.Header.Set\("Idempotency-Key"\)$`
	req.Header.Set("Idempotency-Key", key)
}

func send(req *http.Request) {
	setKey(req, uuid.NewString()) // want `^idempotency key derived from randomness: uuid.NewString → setKey\(\) → http.Header.Set\("Idempotency-Key"\)$`
}

// bucket passes its parameter to its result.
func bucket(t time.Time) int64 { // want bucket:`^param 0 to result$`
	return t.Unix() / 86400 / 30
}

func bucketKey() idempotency.Key { // want bucketKey:`^result from the clock`
	return keys.MustKey(idempotency.Int("bucket", bucket(time.Now()))) // want `^idempotency key derived from the clock: time.Now → bucket\(\) → idempotency.Int\("bucket"\)$`
}

type Payout struct {
	PayeeID string
	PaidAt  time.Time
}

// A business time through the same helper is fine.
func taxYearKey(p Payout) idempotency.Key { // want taxYearKey:`^param 0 f1 to result; param 0 f1 to sink: bucket\(\) → idempotency.Int\("bucket"\)$`
	return keys.MustKey(idempotency.Int("bucket", bucket(p.PaidAt)))
}

// A key built from a key already reported is not reported again.
func resend(req *http.Request) {
	setKey(req, bucketKey().String())
}

// A closure reading a captured clock value.
func sweep(users []string) []idempotency.Key { // want sweep:`^result from the clock: time.Now → .Month → idempotency.Int\("month"\) → idempotency.KeySpace.MustKey → func literal → append; param 0 \[\] to result; param 0 \[\] to sink: func literal → idempotency.Str\("user"\)$`
	now := time.Now()
	var out []idempotency.Key
	mk := func(user string) idempotency.Key {
		return keys.MustKey(idempotency.Str("user", user), idempotency.Int("month", int64(now.Month()))) // want `^idempotency key derived from the clock: time.Now → .Month → idempotency.Int\("month"\)$`
	}
	for _, u := range users {
		out = append(out, mk(u))
	}
	return out
}
