package idempotency

import (
	"context"
	"time"
)

// BatchStore is an optional Store capability: many claims, or many changes
// of held records, in one round trip, so that the price of a claim and of a
// completion is paid once per batch rather than once per effect. Package
// sweep and GroupCommit detect it with a type assertion. Both stores of this
// module implement it; storetest checks it against the same verdict and
// transition tables as Claim and Transition.
//
// Each request and each change keeps every rule of its single-key twin:
// Decide's verdict, a new token per acquisition, one active record per key,
// fencing by the change's own token, the evidence of the attempts. A batch
// only shares the round trip (and, for durable stores, the commit).
type BatchStore interface {
	Store

	// ClaimMany decides every request as Claim would and returns one Claim
	// per request, in order. Requests for different keys are independent.
	// Requests for one key are decided one after the other, as successive
	// Claim calls would be: after the first acquires the key, the next
	// meets the record it left (in flight, or a mismatch). Durable stores
	// answer a batch of distinct keys in one statement.
	//
	// An error means the batch could not be answered: no Claim is returned.
	// A claim the store knows it took before the error, on a key nothing
	// may have acted on, should be released (the caller will never call
	// under it); any other is left to expire under its lease, exactly as
	// when Claim's answer is lost.
	ClaimMany(ctx context.Context, reqs []ClaimRequest) ([]Claim, error)

	// TransitionMany applies every change as Transition would and returns
	// one result per change, in order. Each result carries its own error
	// (ErrClaimLost, ErrInvalidTransition, a hook's error): one change
	// refused never affects the others. Changes of one key are applied one
	// after the other, in order, each fenced by its own token; they are
	// never merged into one update. A change with a Hook runs it in the same
	// transaction as its own change, isolated from the other hooks (a
	// savepoint in durable stores): a failing hook writes nothing of its
	// change and leaves the claim held, and the others are written.
	//
	// An error is the batch's: no change was written (or, when a durable
	// store lost its connection during the commit, it is unknown whether
	// they were, exactly as for Transition).
	TransitionMany(ctx context.Context, changes []Change) ([]TransitionResult, error)
}

// TransitionResult is the answer to one change of TransitionMany: the
// record as the change left it, or the change's own error.
type TransitionResult struct {
	Record Record
	Err    error
}

// ClaimRequestFor returns the claim request Run makes for an input whose
// key and fingerprint Identity returned, with the effect's lease (or the
// executor's default). A caller that claims many inputs at once (a
// BatchStore's ClaimMany) builds its requests with it and then runs each
// input with RunClaimed.
func ClaimRequestFor[In, Out any](x *Executor, e *Effect[In, Out], key Key, fp []byte) ClaimRequest {
	lease := e.Lease
	if lease == 0 {
		lease = x.cfg.Lease
	}
	return e.claimRequest(key, fp, lease)
}

// RunClaimed is Run for an input whose claim was made ahead of the run, by
// a ClaimMany of the request ClaimRequestFor built: it starts from c, as Run
// starts from the answer of its own claim, and does everything after it
// exactly as Run does (the provider call through the middleware, in-run
// retries, completion, release, failure, park, reconciliation, recovery),
// and reports the run to the executor (Config.OnOutcome, the log).
//
// claimedAt is when, on the executor's clock, the store answered the claim
// (read the clock just before making it): the provider's window is
// measured from there, not from the start of the run. A claim that holds
// must still be live: the caller keeps its lease (by Extend) while the run
// waits to start. When ctx is done before the first attempt, a held claim
// is released as not acted, never left held.
//
// A claim made for another key is OutcomeInvalid (ErrInvalidEffect).
func RunClaimed[In, Out any](ctx context.Context, x *Executor, e *Effect[In, Out], in In, c Claim, claimedAt time.Time) (Result[Out], error) {
	r := &runner[In, Out]{x: x, e: e, in: in, given: &c, claimedAt: claimedAt}
	return r.runAndReport(ctx)
}

// WithStore returns an executor that shares x's configuration and
// middleware and runs against s instead; x is unchanged. A sweep uses it to
// send the changes of a batch's runs through a store that groups them.
func (x *Executor) WithStore(s Store) *Executor {
	y := *x
	y.store = s
	return &y
}
