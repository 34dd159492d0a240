package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"
)

// ExpiredPolicy says what the provider does with a repeated key, and so
// what may be done with a record whose provider call may have acted: a
// claim whose holder died after calling, or an attempt whose outcome is
// unknown (a timeout, a 5xx).
type ExpiredPolicy uint8

const (
	// ExpiredPark (the zero value): the provider is not known to
	// deduplicate, so a record whose call may have acted is never retried
	// under its key. It is in doubt: a run of an effect with Find asks the
	// provider and settles it; otherwise an operator does.
	ExpiredPark ExpiredPolicy = iota
	// ExpiredRetry: the provider deduplicates by key and replays its first
	// answer (Stripe does for 24 hours; set Effect.DedupWindow). A record
	// whose call may have acted is retried under the same key, in-run and
	// by later runs, while a whole run fits in the window; past it the
	// record is in doubt, as with ExpiredPark.
	ExpiredRetry
	// ExpiredRetryUncalled: the provider does not deduplicate (a postback
	// receiver, a payout), but the executor records the start of each call
	// (one more statement per first-time run), so a claim whose worker died
	// before calling is taken over, and one whose call had started is in
	// doubt. An error that does not say the provider did not act
	// (ClassNotActed) is never retried.
	ExpiredRetryUncalled
)

func (p ExpiredPolicy) String() string {
	switch p {
	case ExpiredPark:
		return "park"
	case ExpiredRetry:
		return "retry"
	case ExpiredRetryUncalled:
		return "retry_uncalled"
	}
	return fmt.Sprintf("ExpiredPolicy(%d)", uint8(p))
}

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

	// Call performs the external write. It receives the provider key and
	// must send it as the provider's idempotency key (key.Base() is the
	// business key, for metadata a Find can match). Classify its errors
	// with NotActed, Unknown, Permanent, Mismatch or Reconcile: an
	// unclassified error means the provider may have acted. Return an error
	// wrapping ErrSkip to record that there was nothing to do. Report what
	// the provider answered (status, request id, replay) with Observe.
	Call func(ctx context.Context, key Key, in In) (Out, error)

	// Find, when set, asks the provider whether the effect of key exists
	// and what it is: (result, true, nil) when found, (zero, false, nil)
	// when the provider has nothing for the key, an error when it cannot
	// tell. key is the business key (Key.Base). It must see every object
	// any generation of the effect created (match the business key in the
	// object's metadata, say), and read what was just written (never a
	// search index that lags). With Find, a record in doubt settles itself:
	// found, it is recorded without a call; not found, it is sent again
	// under a new provider-key generation. Find runs only under a claim,
	// after the last attempt's lease has ended.
	Find func(ctx context.Context, key Key, in In) (Out, bool, error)

	// OnComplete, when set, records the caller's domain row in the same
	// transaction that marks the effect applied (for pgguard's store, get
	// it with pgguard.TxFrom, or write the hook with pgguard.OnComplete).
	// If it fails, nothing is marked and the claim is left to expire.
	OnComplete func(ctx context.Context, in In, out Out) error

	// OnFail, when set, records the caller's domain row for a refused
	// effect (a permanent provider error, or the provider's own payload
	// mismatch) in the same transaction that marks the record failed. If
	// it fails, nothing is marked and the claim is left to expire.
	OnFail func(ctx context.Context, in In, cause error) error

	// Codec encodes results for the ledger. Nil means JSON.
	Codec Codec[Out]

	// Lease is how long a claim is held before others consider it
	// abandoned. Zero means Config.Lease. Choose it well above the
	// provider call's timeout times the in-run attempts, and below
	// DedupWindow.
	Lease time.Duration

	// Expired says whether the provider deduplicates by key, and so what
	// happens to a record whose provider call may have acted. The zero
	// value (ExpiredPark) never retries such a record under its key.
	Expired ExpiredPolicy

	// DedupWindow is how long the provider remembers a key (Stripe: 24h).
	// The claim that starts a provider key stores the deadline; no call,
	// first or in-run retry, starts after it, and a record whose call may
	// have acted is retried under the same key only while a whole run
	// (the lease) fits before it. Zero means the provider's memory is not
	// limited.
	DedupWindow time.Duration

	// Retry overrides Config.Retry for this effect.
	Retry *RetryPolicy

	// RememberRefusal is how long a sweep skips a candidate whose last
	// record was refused (failed) with the same payload fingerprint: a
	// refusal that cannot change (a credit in the wrong currency) is then
	// sent once, not every night. A changed payload is tried at once.
	// Zero means refusals are not remembered. It needs a store that
	// implements RefusalLookup (both stores of this module do).
	RememberRefusal time.Duration

	// Retain is how long the effect's finished records (applied, skipped,
	// failed, revoked) are kept before a pruner may delete them
	// (pgguard.Store.Prune; the effectonce command's prune). Zero means
	// for ever, which is right for once-ever effects (an anniversary code):
	// a deleted record no longer stops a late redelivery. Choose it longer
	// than the longest redelivery the trigger can make, and only where the
	// provider's memory or the domain table's own unique index would make
	// a delivery after it harmless.
	Retain time.Duration
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
	case e.Lease < 0 || e.DedupWindow < 0 || e.Retain < 0 || e.RememberRefusal < 0:
		return fmt.Errorf("%w: effect %s has a negative duration", ErrInvalidEffect, e.Name)
	case e.Expired > ExpiredRetryUncalled:
		return fmt.Errorf("%w: effect %s has an unknown ExpiredPolicy %d", ErrInvalidEffect, e.Name, e.Expired)
	case e.DedupWindow > 0 && e.Lease >= e.DedupWindow:
		return fmt.Errorf("%w: effect %s: Lease %v does not fit in DedupWindow %v", ErrInvalidEffect, e.Name, e.Lease, e.DedupWindow)
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
		return Key{}, nil, fmt.Errorf("%s: key: %w", e.Name, err)
	}
	if key.IsZero() {
		return Key{}, nil, fmt.Errorf("%s: %w", e.Name, &KeyError{Reason: "Key returned the zero Key", Err: ErrEmptyNamespace})
	}
	key = key.Base()
	if e.Fingerprint == nil {
		return key, nil, nil
	}
	raw, err := e.Fingerprint(in)
	if err != nil {
		return Key{}, nil, fmt.Errorf("%w: %s: fingerprint: %w", ErrInvalidEffect, e.Name, err)
	}
	return key, hashFingerprint(raw), nil
}

func hashFingerprint(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}

// claimRequest is the request Run makes for key and fp.
func (e *Effect[In, Out]) claimRequest(key Key, fp []byte, lease time.Duration) ClaimRequest {
	return ClaimRequest{
		Key:         key.String(),
		Namespace:   key.Namespace(),
		Fingerprint: fp,
		Lease:       lease,
		Window:      e.DedupWindow,
		TakeOver:    e.Expired == ExpiredRetry,
		Track:       e.Expired == ExpiredRetryUncalled,
		Reconcile:   e.Find != nil,
	}
}

// Preflight decides, from an active record a pre-flight lookup returned
// (Store.Lookup), what a claim by Run would decide now on x's clock, without
// touching the store: Decide's verdict for the request Run would make. A
// sweep settles the verdicts that do not hold (done, mismatch, in flight,
// not due, in doubt) without a claim; the claim stays the guard for the
// others. fp is the fingerprint from Identity.
func Preflight[In, Out any](x *Executor, e *Effect[In, Out], rec Record, fp []byte) Verdict {
	lease := e.Lease
	if lease == 0 {
		lease = x.cfg.Lease
	}
	key := Key{value: rec.Key, namespace: rec.Namespace}
	v, _ := Decide(rec, e.claimRequest(key, fp, lease), x.now())
	return v
}
