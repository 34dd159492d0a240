package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"
)

// ExpiredPolicy says what to do with a pending claim whose lease expired:
// the worker that held it died somewhere between the claim and the record,
// so nobody knows whether the provider acted.
type ExpiredPolicy uint8

const (
	// ExpiredPark (the zero value) leaves the record for an operator and
	// reports ErrNeedsReconciliation. Right for providers that do not
	// deduplicate (a postback that timed out, a bank transfer).
	ExpiredPark ExpiredPolicy = iota
	// ExpiredRetry takes the claim over with a new fencing token and calls
	// the provider again under the same key, relying on the provider to
	// replay the first result (Stripe does within 24 hours; set
	// Effect.DedupWindow). Right also where the call is known to be safe
	// to repeat.
	ExpiredRetry
	// ExpiredRetryUncalled takes an expired claim over only if its worker
	// died before calling the provider, and parks it otherwise. The
	// executor records the start of each call (one more statement per
	// first-time run), so a provider that does not deduplicate (a postback
	// receiver, a payout) is never called twice for one intent by a
	// takeover, yet a worker that died right after claiming does not need
	// an operator.
	ExpiredRetryUncalled
)

// Effect describes one kind of external side effect, such as "create the
// anniversary promotion code" or "refund this refund request".
//
// Name, Key and Call are required. An Effect is read-only once in use and
// may be shared by many goroutines.
type Effect[In, Out any] struct {
	// Name identifies the effect in logs, events and errors.
	Name string

	// Key builds the idempotency key from the business identity in In,
	// typically with a KeySpace. It must return the same key for every
	// delivery of the same intent: never derive it from the clock, a
	// random value, or anything a redelivery can change.
	Key func(in In) (Key, error)

	// Fingerprint, when set, returns the payload bytes that must be equal
	// for two runs under one key (an amount, a coupon). The executor stores
	// their SHA-256 and reports a *MismatchError, without calling the
	// provider, when a key is reused with another payload.
	Fingerprint func(in In) ([]byte, error)

	// Call performs the external write. It receives the key and must send
	// it as the provider's idempotency key. Classify its errors with
	// Retryable, Permanent, Mismatch or Reconcile; unclassified errors are
	// treated as retryable. Return an error wrapping ErrSkip to record that
	// there was nothing to do.
	Call func(ctx context.Context, key Key, in In) (Out, error)

	// OnComplete, when set, records the caller's domain row in the same
	// transaction that marks the effect applied (tx is a pgx.Tx with
	// pgguard's store, nil with the in-memory store). If it fails, nothing
	// is marked and the claim is left to expire.
	OnComplete func(ctx context.Context, tx any, in In, out Out) error

	// OnFail, when set, records the caller's domain row for a refused
	// effect (a permanent provider error, or the provider's own payload
	// mismatch) in the same transaction that marks the record failed. If
	// it fails, nothing is marked and the claim is left to expire.
	OnFail func(ctx context.Context, tx any, in In, cause error) error

	// Codec encodes results for the ledger. Nil means JSON.
	Codec Codec[Out]

	// Lease is how long a claim is held before others consider it
	// abandoned. Zero means Config.Lease. Choose it well above the
	// provider call's timeout including retries.
	Lease time.Duration

	// Expired is the policy for claims whose lease expired. The zero value
	// parks them for reconciliation.
	Expired ExpiredPolicy

	// DedupWindow is how long the provider remembers a key (Stripe: 24h).
	// With ExpiredRetry, a pending record first claimed longer ago than
	// this is not taken over but reported as needing reconciliation. Zero
	// means the provider's memory is not limited (or the call is safe).
	DedupWindow time.Duration

	// Retry overrides Config.Retry for this effect.
	Retry *RetryPolicy
}

// Validate reports whether the effect is usable: errors match
// ErrInvalidEffect. Run and Identity call it first.
func (e *Effect[In, Out]) Validate() error {
	switch {
	case e == nil:
		return fmt.Errorf("%w: nil effect", ErrInvalidEffect)
	case e.Name == "":
		return fmt.Errorf("%w: empty name", ErrInvalidEffect)
	case e.Key == nil:
		return fmt.Errorf("%w: effect %s has no Key function", ErrInvalidEffect, e.Name)
	case e.Call == nil:
		return fmt.Errorf("%w: effect %s has no Call function", ErrInvalidEffect, e.Name)
	case e.Lease < 0 || e.DedupWindow < 0:
		return fmt.Errorf("%w: effect %s has a negative duration", ErrInvalidEffect, e.Name)
	}
	return nil
}

func (e *Effect[In, Out]) codec() Codec[Out] {
	if e.Codec != nil {
		return e.Codec
	}
	return JSONCodec[Out]{}
}

// Codec encodes and decodes an effect's result for the ledger.
type Codec[Out any] interface {
	Encode(Out) ([]byte, error)
	Decode([]byte) (Out, error)
}

// JSONCodec is the default Codec, using encoding/json.
type JSONCodec[Out any] struct{}

// Encode implements Codec.
func (JSONCodec[Out]) Encode(v Out) ([]byte, error) { return json.Marshal(v) }

// Decode implements Codec.
func (JSONCodec[Out]) Decode(b []byte) (Out, error) {
	var v Out
	err := json.Unmarshal(b, &v)
	return v, err
}

// FingerprintJSON is a ready Fingerprint helper: the JSON encoding of v.
// Use it with a struct holding exactly the fields that define the payload.
func FingerprintJSON(v any) ([]byte, error) { return json.Marshal(v) }

// Identity returns the key and the stored fingerprint of in, exactly as Run
// computes them: the fingerprint is the SHA-256 of Fingerprint's bytes, or
// nil without a Fingerprint function. Sweeps use it to pre-flight
// candidates; contract tests use it to check that keys are stable.
func (e *Effect[In, Out]) Identity(in In) (Key, []byte, error) {
	if err := e.Validate(); err != nil {
		return Key{}, nil, err
	}
	key, err := e.Key(in)
	if err != nil {
		return Key{}, nil, fmt.Errorf("idempotency: %s: key: %w", e.Name, err)
	}
	if key.IsZero() {
		return Key{}, nil, fmt.Errorf("idempotency: %s: %w", e.Name, &KeyError{Reason: "Key returned the zero Key", Err: ErrEmptyNamespace})
	}
	if e.Fingerprint == nil {
		return key, nil, nil
	}
	raw, err := e.Fingerprint(in)
	if err != nil {
		return Key{}, nil, fmt.Errorf("%w: %s: fingerprint: %v", ErrInvalidEffect, e.Name, err)
	}
	return key, hashFingerprint(raw), nil
}

func hashFingerprint(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}
