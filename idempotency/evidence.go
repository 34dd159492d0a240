package idempotency

import (
	"context"
	"errors"
	"time"
	"unicode/utf8"
)

// AttemptClass is what one provider attempt proves about the provider.
type AttemptClass string

const (
	// AttemptDone: the provider acted (a success, or its replay of an
	// earlier success under the same key).
	AttemptDone AttemptClass = "done"
	// AttemptSkipped: the effect decided there was nothing to do.
	AttemptSkipped AttemptClass = "skipped"
	// AttemptNotActed: the provider provably did nothing (a 429 or 409
	// answered before executing, a validation error it does not save, a
	// refused connection, a request never written, a call that never
	// started).
	AttemptNotActed AttemptClass = "not_acted"
	// AttemptUnknown: the provider may have acted (a timeout after the
	// request was written, a lost response, a 5xx, a replayed failure).
	AttemptUnknown AttemptClass = "unknown"
	// AttemptRefused: the provider refused; nothing was created.
	AttemptRefused AttemptClass = "refused"
	// AttemptMismatch: the provider saw the key with other parameters.
	AttemptMismatch AttemptClass = "mismatch"
)

// Attempt is the evidence one provider attempt left, kept in
// Record.Evidence.
type Attempt struct {
	// At is when the attempt ended, on the executor's clock.
	At time.Time `json:"at"`
	// Generation is the provider-key generation the attempt was sent under.
	Generation int          `json:"gen"`
	Class      AttemptClass `json:"class"`
	// Status is the provider's status code (HTTP), zero when no answer
	// came back.
	Status int `json:"status,omitempty"`
	// RequestID is the provider's id of the request (Stripe's Request-Id).
	RequestID string `json:"request_id,omitempty"`
	// Replayed reports that the answer was the provider's replay of an
	// earlier answer under the same key.
	Replayed bool `json:"replayed,omitempty"`
	// Error is the start of the attempt's error (at most 200 bytes); HMAC
	// keys are redacted.
	Error string `json:"error,omitempty"`
}

// Observation is what an adapter learned about the provider's answer to an
// attempt. Adapters report it with Observe; the executor keeps it in the
// attempt's evidence.
type Observation struct {
	Status    int    // the status code; zero when no answer came back
	RequestID string // the provider's request id, if any
	Replayed  bool   // the answer is a replay of an earlier one under the key
}

type observerKey struct{}

type observer struct{ obs Observation }

// Observe records what the provider answered to the attempt running under
// ctx (the context the executor passed to Effect.Call). Outside an attempt
// it does nothing. The last observation of an attempt wins.
func Observe(ctx context.Context, o Observation) {
	if ob, ok := ctx.Value(observerKey{}).(*observer); ok {
		ob.obs = o
	}
}

// AttemptClassOf is the evidence class the executor records for an attempt
// that ended with err (nil: done): for middleware and instrumentation that
// report attempts the way the ledger does.
func AttemptClassOf(err error) AttemptClass { return attemptClass(err) }

// attemptClass maps a Call's outcome to its evidence class.
func attemptClass(err error) AttemptClass {
	if err == nil {
		return AttemptDone
	}
	if errors.Is(err, ErrSkip) {
		return AttemptSkipped
	}
	c, _ := Classify(err)
	switch c {
	case ClassNotActed:
		return AttemptNotActed
	case ClassPermanent:
		return AttemptRefused
	case ClassMismatch:
		return AttemptMismatch
	}
	return AttemptUnknown
}

const maxEvidenceError = 200

// truncate keeps at most n bytes of s, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
