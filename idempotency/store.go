package idempotency

import (
	"bytes"
	"context"
	"time"
)

// Status is the state of a ledger record.
type Status string

const (
	// StatusPending: a worker holds (or held) a claim; the effect may or may
	// not have happened at the provider.
	StatusPending Status = "pending"
	// StatusApplied: the effect happened and its result is stored.
	StatusApplied Status = "applied"
	// StatusSkipped: the effect decided there was nothing to do.
	StatusSkipped Status = "skipped"
	// StatusFailed: the provider refused the request. Exempt from the
	// uniqueness rule: a later run may claim the key again.
	StatusFailed Status = "failed"
	// StatusRevoked: the effect was undone by its owner (a promotion code
	// deactivated). Exempt from the uniqueness rule.
	StatusRevoked Status = "revoked"
)

// Active reports whether records in this status block their key. At most one
// active record exists per key: this is the partial unique index.
func (s Status) Active() bool {
	return s == StatusPending || s == StatusApplied || s == StatusSkipped
}

// Done reports whether the status is a finished, active outcome (applied or
// skipped).
func (s Status) Done() bool { return s == StatusApplied || s == StatusSkipped }

// Record is one ledger row.
type Record struct {
	Key         string
	Namespace   string
	Status      Status
	Fingerprint []byte // nil when the effect has no fingerprint
	Result      []byte // the encoded result; set for applied and skipped
	// Token is the fencing token of the current (or last) claim. Tokens are
	// unique across every claim a store ever hands out, so a token from an
	// earlier claim never matches a later one.
	Token int64
	// Attempts counts the claims taken on this record (1 for the first).
	Attempts int
	// LeaseUntil is when the current claim expires; zero when no claim is
	// held (released, parked or finished).
	LeaseUntil time.Time
	// Parked is set on a pending record that must not be retried blindly
	// and waits for an operator (see Store.Settle).
	Parked bool
	// CallStarted is set by MarkCalling: a provider call began under the
	// current claim. Cleared by Release and by a takeover.
	CallStarted bool
	// Reason holds the last failure or park reason.
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

// ClaimRequest asks a store to claim a key or fetch its active record.
type ClaimRequest struct {
	Key         string
	Namespace   string
	Fingerprint []byte
	// Lease is how long the claim is held before another worker may
	// consider it abandoned. Must be positive.
	Lease time.Duration
	// TakeOver allows taking over a pending record whose lease has expired
	// (policy ExpiredRetry). Without it such a record is reported as
	// needing reconciliation.
	TakeOver bool
	// OnlyUncalled restricts TakeOver to records whose provider call never
	// started (Record.CallStarted unset): policy ExpiredRetryUncalled.
	OnlyUncalled bool
	// Window, when positive, is the provider's dedup window: a pending
	// record first claimed longer ago than Window is never taken over,
	// released or expired, because the provider no longer remembers the
	// key and a retry could act twice.
	Window time.Duration
}

// Claim is the answer to a ClaimRequest.
type Claim struct {
	// Record is the record now held by the caller (Acquired) or the active
	// record that was already there.
	Record Record
	// Acquired reports that the caller holds the claim under Record.Token:
	// a new pending record, a released one, or an expired one taken over.
	Acquired bool
	// Stuck reports a pending record that is not held by a live lease and
	// may not be taken over: parked, expired under a no-takeover policy,
	// released or expired past the dedup window. Never set together with
	// Acquired.
	Stuck bool
}

// CompleteRequest finishes a held claim.
type CompleteRequest struct {
	Key    string
	Token  int64
	Status Status // StatusApplied or StatusSkipped
	Result []byte
	// Hook, when non-nil, runs in the same transaction as the completion:
	// if it fails, nothing is written. tx is the store's transaction handle
	// (a pgx.Tx for pgguard's store; nil for the in-memory store).
	Hook func(ctx context.Context, tx any) error
}

// ReleaseRequest lets go of a held claim without finishing it.
type ReleaseRequest struct {
	Key   string
	Token int64
	// Park keeps the record pending and blocked for an operator instead of
	// freeing it for the next claim.
	Park   bool
	Reason string
}

// FailRequest marks a held claim failed.
type FailRequest struct {
	Key    string
	Token  int64
	Reason string
	// Hook, when non-nil, runs in the same transaction as the failure, as
	// CompleteRequest.Hook does: if it fails, nothing is written.
	Hook func(ctx context.Context, tx any) error
}

// SettleRequest resolves a stuck pending record by hand, after an operator
// checked the provider.
type SettleRequest struct {
	Key    string
	Token  int64  // the token seen in ListStuck; guards against a live worker
	Status Status // StatusApplied, StatusSkipped or StatusFailed
	Result []byte
	Reason string
}

// ListStuckRequest filters ListStuck.
type ListStuckRequest struct {
	Namespace string // empty: every namespace
	Limit     int    // zero: 100
	// Window, when positive, also lists released records first claimed at
	// least Window ago: past the provider's dedup window they need
	// reconciliation too. Pass the effect's DedupWindow.
	Window time.Duration
}

// Store is the ledger the executor needs. Every method is safe for
// concurrent use by many goroutines and, for durable stores, many processes.
//
// The core guarantee: at most one active record (pending, applied or
// skipped) exists per key; failed and revoked records are exempt. Every
// store must pass storetest.Run.
type Store interface {
	// Claim inserts a pending record for req.Key under a fresh token, or
	// returns the active record already there. It takes over an existing
	// pending record (new token, Attempts+1) when that record was released,
	// or when its lease has expired, req.TakeOver is set, it is within
	// req.Window, its fingerprint equals req.Fingerprint and, with
	// req.OnlyUncalled, its call never started. It never takes over a
	// parked record. A takeover clears CallStarted. It does all this atomically, in one round trip
	// for durable stores.
	Claim(ctx context.Context, req ClaimRequest) (Claim, error)

	// Complete marks the held claim applied or skipped and stores the
	// result, running req.Hook in the same transaction. If the token no
	// longer matches a pending record, it changes nothing and returns
	// ErrClaimLost.
	Complete(ctx context.Context, req CompleteRequest) (Record, error)

	// MarkCalling records that the holder of the claim is about to call
	// the provider (Record.CallStarted). A stale token changes nothing and
	// returns ErrClaimLost. Only effects with ExpiredRetryUncalled use it.
	MarkCalling(ctx context.Context, key string, token int64) error

	// Release lets go of the held claim: the record stays pending and is
	// either free for the next Claim or, with Park, stuck for an operator.
	// Without Park it clears CallStarted (the provider said it did not act).
	// A stale token changes nothing and returns ErrClaimLost.
	Release(ctx context.Context, req ReleaseRequest) error

	// Fail marks the held claim failed, which frees the key, running
	// req.Hook in the same transaction. A stale token changes nothing and
	// returns ErrClaimLost.
	Fail(ctx context.Context, req FailRequest) (Record, error)

	// Lookup returns the active records among keys, for pre-flight checks
	// of many candidates at once (one round trip for durable stores). Keys
	// without an active record are absent from the map.
	Lookup(ctx context.Context, keys []string) (map[string]Record, error)

	// Revoke marks the applied or skipped record of key revoked, which
	// frees the key. It returns ErrNotFound when no such record exists.
	Revoke(ctx context.Context, key string, reason string) (Record, error)

	// ListStuck returns pending records nobody will finish on their own:
	// parked ones, those whose lease has expired, and, with req.Window,
	// released ones past the window; oldest first.
	ListStuck(ctx context.Context, req ListStuckRequest) ([]Record, error)

	// Settle resolves a pending record by hand. The token must match the
	// record's current token, or it returns ErrClaimLost.
	Settle(ctx context.Context, req SettleRequest) (Record, error)
}
