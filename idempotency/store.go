package idempotency

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"
)

// Record is one ledger row.
type Record struct {
	Key       string
	Namespace string
	State     State
	// PrevState is the state before the last transition; empty for a
	// record no transition has changed since it was created. A claim's
	// caller reads it to learn what it took over.
	PrevState   State
	Fingerprint []byte // nil when the effect has no fingerprint
	Result      []byte // the encoded result; set for applied and skipped (kept when revoked)
	// Token is the fencing token of the current (or last) claim. Tokens are
	// unique across every claim a store ever hands out, so a token from an
	// earlier claim never matches a later one.
	Token int64
	// Claims counts the claims taken on this record (1 for the first).
	Claims int
	// Generation is the provider-key generation: 1 at first, incremented
	// when a reconciliation found nothing at the provider and sends again
	// under a new provider key (Key.WithGeneration).
	Generation int
	// LeaseUntil: for held states, when the claim expires; for unknown and
	// in_doubt, until when the last attempt may still have been running
	// (a reconciliation waits for it); zero otherwise.
	LeaseUntil time.Time
	// DueAt: for released, unknown and in_doubt, the record is not tried
	// again before it (a provider's Retry-After, a backoff); zero means at
	// once.
	DueAt time.Time
	// DedupUntil is when the provider may forget the current provider key:
	// the claim that started the key stored it (now plus the effect's
	// DedupWindow). Zero means never (or not known, see DedupDeadline).
	DedupUntil time.Time
	// Evidence holds the last MaxEvidence provider attempts, oldest first.
	Evidence []Attempt
	// Reason holds the last failure, release or park reason.
	Reason         string
	FirstClaimedAt time.Time
	UpdatedAt      time.Time
}

// FingerprintMatches reports whether the record was claimed with fp.
// Records and requests without a fingerprint match each other only.
func (r Record) FingerprintMatches(fp []byte) bool {
	if len(r.Fingerprint) == 0 && len(fp) == 0 {
		return true
	}
	return bytes.Equal(r.Fingerprint, fp)
}

// Clone returns a deep copy of r.
func (r Record) Clone() Record {
	r.Fingerprint = slices.Clone(r.Fingerprint)
	r.Result = slices.Clone(r.Result)
	r.Evidence = slices.Clone(r.Evidence)
	return r
}

// ClaimRequest asks a store to claim a key or fetch its active record. What
// the claim decides is Decide's rule.
type ClaimRequest struct {
	Key         string
	Namespace   string
	Fingerprint []byte
	// Lease is how long the claim is held before others may consider it
	// abandoned. Must be positive.
	Lease time.Duration
	// Window is the provider's dedup window (Effect.DedupWindow): a claim
	// that starts a provider key stores now + Window as the record's
	// DedupUntil. Zero: the provider's memory is not limited.
	Window time.Duration
	// TakeOver says the provider deduplicates by key (policy ExpiredRetry):
	// a record whose provider call may have acted (expired calling,
	// unknown) is taken over under the same provider key while a whole run
	// fits before DedupUntil.
	TakeOver bool
	// Track says the caller records the start of its provider call
	// (policy ExpiredRetryUncalled): a clean claim enters StateClaimed, and
	// an expired claimed record (nothing was sent) is taken over.
	Track bool
	// Reconcile says the caller can ask the provider (Effect.Find): an
	// in-doubt record is handed over in StateReconciling instead of being
	// reported in doubt.
	Reconcile bool
}

// Claim is the answer to a ClaimRequest.
type Claim struct {
	// Verdict says what the claim decided.
	Verdict Verdict
	// Record is the record the caller now holds (Verdict.Holds: its
	// PrevState says what was taken over, empty for a new record) or the
	// active record that was already there.
	Record Record
}

// Change is one transition of a held record, fenced by the holder's token:
// complete, skip, mark the call as started, extend the lease, release,
// park, fail, and the reconciler's found and resend. Build it with the
// constructors (Complete, Release, ...); Transitions lists what each may
// start from. A store applies it only if the record is still held under
// Token in one of those states, and otherwise changes nothing and returns
// ErrClaimLost. Recover is the one change made without the token.
type Change struct {
	Key   string
	Token int64
	// To is the target state; empty keeps the state (Extend).
	To State
	// By is who makes the change: ByHolder, or ByFormerHolder for Recover.
	By Actor
	// Result is stored for applied and skipped (a nil result is stored as
	// empty, never as missing).
	Result []byte
	// Reason is stored as Record.Reason (the last failure or park reason);
	// empty clears it.
	Reason string
	// Evidence is appended to Record.Evidence, which keeps the last
	// MaxEvidence attempts.
	Evidence []Attempt
	// Lease, for a held target, renews the lease to now + Lease (Extend,
	// Resend).
	Lease time.Duration
	// DueIn, for released, unknown and in_doubt, keeps the record from
	// being tried before now + DueIn.
	DueIn time.Duration
	// AttemptEnded, for unknown and in_doubt, says the last attempt has
	// ended (an answer came back): a reconciliation need not wait for the
	// lease. Otherwise LeaseUntil is kept as the bound of the attempt.
	AttemptEnded bool
	// Window, for Resend, is the provider's dedup window of the new
	// provider-key generation.
	Window time.Duration
	// Hook, when non-nil, runs in the same transaction as the change: if
	// it fails, nothing is written and its error is returned. Stores that
	// have transactions make theirs reachable from ctx (pgguard.TxFrom).
	Hook func(ctx context.Context) error
	// Namespace and Fingerprint, for Recover, describe the record to
	// create when the key has no active record left.
	Namespace   string
	Fingerprint []byte
}

// Complete is the holder's change to applied with result.
func Complete(key string, token int64, result []byte) Change {
	return Change{Key: key, Token: token, To: StateApplied, By: ByHolder, Result: nonNil(result)}
}

// CompleteSkipped is the holder's change to skipped with result.
func CompleteSkipped(key string, token int64, result []byte) Change {
	return Change{Key: key, Token: token, To: StateSkipped, By: ByHolder, Result: nonNil(result)}
}

// MarkCalling is the holder's change from claimed to calling, made just
// before its first provider call by effects that record it.
func MarkCalling(key string, token int64) Change {
	return Change{Key: key, Token: token, To: StateCalling, By: ByHolder}
}

// Extend renews the holder's lease to now + lease, keeping the state.
func Extend(key string, token int64, lease time.Duration) Change {
	return Change{Key: key, Token: token, By: ByHolder, Lease: lease}
}

// Fail is the holder's change to failed: the provider refused.
func Fail(key string, token int64, reason string) Change {
	return Change{Key: key, Token: token, To: StateFailed, By: ByHolder, Reason: reason}
}

// Release frees the key: no attempt under the current provider key may have
// acted. The next claim may take it once dueIn has passed.
func Release(key string, token int64, reason string, dueIn time.Duration) Change {
	return Change{Key: key, Token: token, To: StateReleased, By: ByHolder, Reason: reason, DueIn: dueIn}
}

// ReleaseUnknown lets go of a record whose provider may have acted, for a
// retry under the same provider key (ExpiredRetry) once dueIn has passed.
func ReleaseUnknown(key string, token int64, reason string, dueIn time.Duration, attemptEnded bool) Change {
	return Change{Key: key, Token: token, To: StateUnknown, By: ByHolder, Reason: reason, DueIn: dueIn, AttemptEnded: attemptEnded}
}

// Park leaves a record in doubt: the provider may have acted and a retry
// under the same key cannot tell. A reconciliation (Effect.Find) or an
// operator settles it.
func Park(key string, token int64, reason string, attemptEnded bool) Change {
	return Change{Key: key, Token: token, To: StateInDoubt, By: ByHolder, Reason: reason, AttemptEnded: attemptEnded}
}

// Found is the reconciler's change to applied with the object the provider
// had made as the result.
func Found(key string, token int64, result []byte) Change {
	return Change{Key: key, Token: token, To: StateApplied, By: ByHolder, Result: nonNil(result)}
}

// Resend is the reconciler's change to calling after the provider had
// nothing: the provider-key generation is incremented and its window
// starts now, and the lease runs for lease from now.
func Resend(key string, token int64, lease, window time.Duration) Change {
	return Change{Key: key, Token: token, To: StateCalling, By: ByHolder, Lease: lease, Window: window}
}

// Recover records a success whose completion was refused (ErrClaimLost):
// token is the lost claim's. It writes only when no live claim holds the
// key: it marks the pending record applied, or creates an applied record
// when the key has none (the old one was settled failed). It never
// overwrites a finished record: the current one is returned with
// ErrClaimLost, or with ErrClaimLive when a live claim holds the key.
func Recover(key string, token int64, namespace string, fingerprint, result []byte) Change {
	return Change{Key: key, Token: token, To: StateApplied, By: ByFormerHolder, Result: nonNil(result),
		Namespace: namespace, Fingerprint: fingerprint}
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Validate reports whether the change is one Transitions allows, with what
// it needs: errors match ErrInvalidTransition. Stores call it first.
func (c Change) Validate() error {
	switch {
	case c.Key == "":
		return fmt.Errorf("%w: empty key", ErrInvalidTransition)
	case c.By != ByHolder && c.By != ByFormerHolder:
		return fmt.Errorf("%w: %s changes go through Operator", ErrInvalidTransition, c.By)
	case c.Token == 0:
		return fmt.Errorf("%w: a %s change needs the claim's token", ErrInvalidTransition, c.By)
	case c.To == "" && c.Lease <= 0:
		return fmt.Errorf("%w: extend needs a positive lease", ErrInvalidTransition)
	case c.To != "" && !c.To.Valid():
		return fmt.Errorf("%w: unknown state %q", ErrInvalidTransition, c.To)
	case c.Lease < 0, c.DueIn < 0, c.Window < 0:
		return fmt.Errorf("%w: negative duration", ErrInvalidTransition)
	case len(Allowed(c.To, c.By)) == 0:
		return fmt.Errorf("%w: no %s transition to %q", ErrInvalidTransition, c.By, c.To)
	}
	return nil
}

var (
	fromReconciling = []State{StateReconciling}
	fromClaimed     = []State{StateClaimed}
)

// From returns the states the change may start from (a shared slice: do
// not modify it).
func (c Change) From() []State {
	if c.To == StateCalling && c.By == ByHolder {
		// One target, two rules: mark-calling (from claimed) and resend
		// (from reconciling, with a lease for the sending run).
		if c.Lease > 0 {
			return fromReconciling
		}
		return fromClaimed
	}
	// To applied by the holder: complete (claimed, calling) and found
	// (reconciling) together.
	return Allowed(c.To, c.By)
}

// NewGeneration reports whether the change starts a new provider-key
// generation (Resend).
func (c Change) NewGeneration() bool {
	return c.To == StateCalling && c.By == ByHolder && c.Lease > 0
}

// MaxEvidence is how many attempts a record keeps in Record.Evidence (the
// most recent ones).
const MaxEvidence = 10

// AppendEvidence returns evidence with more appended, keeping the last
// MaxEvidence entries. Stores use it (pgguard does the same in SQL).
func AppendEvidence(evidence, more []Attempt) []Attempt {
	out := append(slices.Clone(evidence), more...)
	if len(out) > MaxEvidence {
		out = slices.Clone(out[len(out)-MaxEvidence:])
	}
	return out
}

// Store is the ledger the executor needs. Every method is safe for
// concurrent use by many goroutines and, for durable stores, many processes.
//
// The core guarantee: at most one active record (every state but failed
// and revoked) exists per key. Every store must pass storetest.Run.
type Store interface {
	// Claim inserts a record for req.Key under a fresh token, or meets the
	// active record already there and decides by Decide's rule: it takes
	// it over (new token, Claims+1) when the verdict holds, and otherwise
	// returns it untouched. It does this atomically, in one round trip for
	// durable stores.
	Claim(ctx context.Context, req ClaimRequest) (Claim, error)

	// Transition applies a change to a held record (see Change): only if
	// the record is held under c.Token in a state c may start from, with
	// c.Hook in the same transaction. Otherwise it changes nothing and
	// returns ErrClaimLost. An invalid change is ErrInvalidTransition.
	Transition(ctx context.Context, c Change) (Record, error)

	// Lookup returns the active records among keys, for pre-flight checks
	// of many candidates at once (one round trip for durable stores). Keys
	// without an active record are absent from the map.
	Lookup(ctx context.Context, keys []string) (map[string]Record, error)
}

// RefusalLookup is an optional Store capability: the most recent failed
// record of each key, for a sweep that skips candidates refused with the
// same payload (Effect.RememberRefusal). Detect it with a type assertion.
type RefusalLookup interface {
	// LastRefusals returns, for each of keys that has one, its most recent
	// failed record updated at or after since (one round trip for durable
	// stores). Keys without one are absent from the map.
	LastRefusals(ctx context.Context, keys []string, since time.Time) (map[string]Record, error)
}

// Operator is what tools (the effectonce command, an operator's script) use
// to resolve records by hand. It is optional: detect it with a type
// assertion. Both stores of this module implement it.
type Operator interface {
	// ListStuck returns the records nobody will finish on their own
	// (Stuck): in doubt, held past their lease, unknown past the
	// provider's window; oldest first claim first.
	ListStuck(ctx context.Context, req ListStuckRequest) ([]Record, error)

	// Settle resolves a pending record by hand after an operator checked
	// the provider. It runs no hook: an operator who settles a record
	// applied writes the domain row too, in the same transaction where the
	// store allows it (pgguard: Store.WithDB on the caller's pgx.Tx). The token must be the record's current one (as
	// ListStuck showed it), or it returns ErrClaimLost. A record held under
	// a live lease is refused with ErrClaimLive unless req.Force: its
	// holder may still succeed.
	Settle(ctx context.Context, req SettleRequest) (Record, error)

	// Revoke marks the applied or skipped record of key revoked, which
	// frees the key; the result is kept. It returns ErrNotFound when no
	// such record exists.
	Revoke(ctx context.Context, key, reason string) (Record, error)

	// History returns every record ever stored under key, the active one
	// included, newest first; empty when there is none.
	History(ctx context.Context, key string) ([]Record, error)
}

// ListStuckRequest filters ListStuck.
type ListStuckRequest struct {
	Namespace string // empty: every namespace
	Limit     int    // zero: 100
}

// SettleRequest resolves a stuck pending record by hand.
type SettleRequest struct {
	Key    string
	Token  int64 // the token seen in ListStuck
	State  State // StateApplied, StateSkipped or StateFailed
	Result []byte
	Reason string
	// Force settles a record held under a live lease. Its holder's late
	// completion is then refused; if its call succeeded, the executor
	// records that success over a failed settlement (Recover).
	Force bool
}

// Validate reports whether the request can be applied: errors match
// ErrInvalidTransition.
func (r SettleRequest) Validate() error {
	switch {
	case r.Key == "":
		return fmt.Errorf("%w: settle: empty key", ErrInvalidTransition)
	case r.State != StateApplied && r.State != StateSkipped && r.State != StateFailed:
		return fmt.Errorf("%w: settle to %q: want applied, skipped or failed", ErrInvalidTransition, r.State)
	}
	return nil
}
