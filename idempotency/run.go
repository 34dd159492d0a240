package idempotency

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Run performs one delivery of an effect's intent, exactly once across every
// delivery of the same intent:
//
//  1. The key and fingerprint are computed once from in, before anything
//     else, and carried through to the end.
//  2. One store call claims the key or meets its record, and decides
//     (Decide): an applied or skipped record returns its stored result
//     without calling the provider; a live claim elsewhere is in flight; a
//     record not yet due is not due; another fingerprint is a
//     *MismatchError; a record in doubt is reconciled (Effect.Find) or
//     reported.
//  3. The provider is called with the key, each attempt through the
//     executor's middleware, retried in-run as the policy allows while the
//     provider still remembers the key.
//  4. Success is recorded with one store call, together with OnComplete.
//     A success whose completion is refused (the claim was lost) is still
//     recorded when no live claim holds the key.
//  5. Failures release the claim (the provider did not act), leave it for
//     a retry under the same key (the provider may have acted and
//     deduplicates), mark it failed (refused), or leave it in doubt.
//
// Store calls are made with a context detached from ctx's cancellation: a
// claim, a completion or a release is never cut half way, and a run that
// did not call the provider leaves the key free at once. ctx reaches the
// provider call, Find and the middleware.
//
// The returned error is nil exactly for the outcomes Applied,
// AlreadyApplied, Skipped, Reconciled and InFlight, and otherwise matches
// the outcome's sentinel (see Outcome) or is the store's error.
func Run[In, Out any](ctx context.Context, x *Executor, e *Effect[In, Out], in In) (Result[Out], error) {
	r := &runner[In, Out]{x: x, e: e, in: in}
	return r.runAndReport(ctx)
}

// runAndReport runs r and reports the finished run to the executor.
func (r *runner[In, Out]) runAndReport(ctx context.Context) (Result[Out], error) {
	start := time.Now()
	res, err := r.run(ctx)
	res.Err = err
	res.LostResult = r.lost
	if r.x != nil {
		name := ""
		if r.e != nil {
			name = r.e.Name
		}
		r.x.report(ctx, Event{Effect: name, Namespace: res.Key.Namespace(), Key: res.Key, Outcome: res.Outcome,
			Calls: res.Calls, Attempts: res.Attempts, Reconciled: res.Reconciled, LostResult: r.lost, Err: err, Start: start, Duration: time.Since(start)})
	}
	return res, err
}

// runner carries one run through its steps.
type runner[In, Out any] struct {
	x     *Executor
	bg    context.Context // the caller's context without its cancellation, for store calls
	e     *Effect[In, Out]
	in    In
	key   Key    // the business key (generation 1)
	fp    []byte // the stored fingerprint
	lease time.Duration
	codec Codec[Out]
	pol   RetryPolicy
	res   Result[Out]
	// lost is a provider success the ledger could not record, for the log.
	lost []byte

	// given, when set, is a claim made ahead of the run (RunClaimed): the
	// run starts from it instead of claiming. claimedAt is when, on the
	// executor's clock, the store answered that claim; zero means just now.
	given     *Claim
	claimedAt time.Time

	// The attempt under way (see attempt).
	obs     observer
	rec     Record
	state   State
	pkey    Key
	reached bool
	out     Out
}

func (r *runner[In, Out]) run(ctx context.Context) (Result[Out], error) {
	if r.x == nil {
		return r.invalid(fmt.Errorf("%w: nil executor", ErrInvalidEffect))
	}
	if err := r.e.Validate(); err != nil {
		return r.invalid(err)
	}
	// Key and fingerprint: computed once, never again (the call may mutate in).
	key, fp, err := r.e.Identity(r.in)
	if err != nil {
		return r.invalid(err)
	}
	r.key, r.fp, r.res.Key = key, fp, key
	r.lease = r.e.Lease
	if r.lease == 0 {
		r.lease = r.x.cfg.Lease
	}
	if r.e.DedupWindow > 0 && r.lease >= r.e.DedupWindow {
		return r.invalid(fmt.Errorf("%w: effect %s: lease %v does not fit in DedupWindow %v", ErrInvalidEffect, r.e.Name, r.lease, r.e.DedupWindow))
	}
	r.codec = r.e.codec()
	r.pol = r.x.cfg.Retry
	if r.e.Retry != nil {
		r.pol = *r.e.Retry
	}
	r.pol = r.pol.withDefaults()

	var claim Claim
	if r.given != nil {
		// RunClaimed: a claim held already is never left behind unanswered,
		// so a done ctx is handled by the attempt (released, not acted).
		if claim = *r.given; claim.Record.Key != key.String() {
			return r.invalid(fmt.Errorf("%w: %s: the claim given is for another key", ErrInvalidEffect, r.e.Name))
		}
		r.bg = context.WithoutCancel(ctx)
	} else {
		if err := ctx.Err(); err != nil {
			return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: before the claim: %w", r.e.Name, err))
		}
		r.bg = context.WithoutCancel(ctx)
		if claim, err = r.x.store.Claim(r.bg, r.e.claimRequest(key, fp, r.lease)); err != nil {
			return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: claim: %w", r.e.Name, err))
		}
	}
	r.res.Record = claim.Record
	rec := claim.Record
	switch claim.Verdict {
	case VerdictAcquired:
		return r.execute(ctx, rec)
	case VerdictReconcile:
		return r.reconcile(ctx, rec)
	case VerdictDone:
		v, err := r.codec.Decode(rec.Result)
		if err != nil {
			return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: %w: %w", r.e.Name, ErrDecodeResult, err))
		}
		r.res.Value, r.res.Outcome = v, OutcomeAlreadyApplied
		return r.res, nil
	case VerdictMismatch:
		return r.fail(OutcomeMismatch, &MismatchError{Key: rec.Key, Stored: rec})
	case VerdictInFlight:
		r.res.Outcome, r.res.Delay = OutcomeInFlight, r.until(rec.LeaseUntil)
		return r.res, nil
	case VerdictNotDue:
		r.res.Delay = r.until(rec.DueAt)
		if d := r.until(rec.LeaseUntil); d > r.res.Delay {
			r.res.Delay = d
		}
		return r.fail(OutcomeNotDue, fmt.Errorf("idempotency: %s: %w (record %s, due in %v)", r.e.Name, ErrNotDue, rec.State, r.res.Delay))
	case VerdictInDoubt:
		reason := rec.Reason
		if reason == "" {
			reason = "the provider may have acted"
		}
		return r.fail(OutcomeNeedsReconciliation, fmt.Errorf("idempotency: %s: %w: record %s (%d claims): %s",
			r.e.Name, ErrNeedsReconciliation, rec.State, rec.Claims, reason))
	}
	return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: claim: store returned verdict %v", r.e.Name, claim.Verdict))
}

func (r *runner[In, Out]) invalid(err error) (Result[Out], error) {
	r.res.Outcome = OutcomeInvalid
	return r.res, err
}

func (r *runner[In, Out]) fail(o Outcome, err error) (Result[Out], error) {
	r.res.Outcome = o
	return r.res, err
}

// until returns how long from now (the executor's clock) until t; zero for
// a zero or past t.
func (r *runner[In, Out]) until(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return max(t.Sub(r.x.now()), 0)
}

// errNotReached marks an attempt that never reached the provider: a
// middleware returned without calling next, or the start of the call could
// not be recorded.
type errNotReached struct{ err error }

func (e errNotReached) Error() string { return "the call never started: " + e.err.Error() }
func (e errNotReached) Unwrap() error { return e.err }

// execute calls the provider under a held claim, retrying in-run as the
// policy allows, and records what happened.
func (r *runner[In, Out]) execute(ctx context.Context, rec Record) (Result[Out], error) {
	r.res.Record = rec
	state := rec.State
	pkey := r.key.WithGeneration(rec.Generation)
	// What the provider may have done before this claim: a takeover of a
	// record whose call may have acted. A resend starts a new generation
	// the provider has never seen.
	prior := rec.PrevState.MayHaveActed() && rec.PrevState != StateReconciling
	deadline := r.callDeadline(rec)
	backoff := r.pol.InitialBackoff

	var (
		out      Out
		err      error
		attempts []Attempt
	)
	for n := 1; ; n++ {
		var stop error
		switch {
		case ctx.Err() != nil:
			stop = fmt.Errorf("context done before attempt %d: %w", n, ctx.Err())
		case !deadline.IsZero() && !r.x.now().Before(deadline):
			stop = fmt.Errorf("the provider's dedup window ended before attempt %d", n)
		}
		if stop != nil {
			if n == 1 {
				err = NotActed(stop, 0)
				attempts = append(attempts, r.evidence(rec.Generation, AttemptNotActed, Observation{}, stop))
			}
			break
		}
		var (
			obs     Observation
			reached bool
		)
		out, obs, reached, err = r.attempt(ctx, rec, &state, pkey, n)
		if !reached {
			err = NotActed(err, 0)
			attempts = append(attempts, r.evidence(rec.Generation, AttemptNotActed, obs, err))
			break
		}
		attempts = append(attempts, r.evidence(rec.Generation, attemptClass(err), obs, err))
		if err == nil || errors.Is(err, ErrSkip) {
			break
		}
		class, after := Classify(err)
		if !r.retryInRun(ctx, class, n, after) {
			break
		}
		if r.x.sleep(ctx, max(backoff, after)) != nil {
			break // cancelled while waiting: decide on the last failure
		}
		backoff = min(backoff*2, r.pol.MaxBackoff)
	}
	r.res.Attempts = attempts
	return r.settle(ctx, rec, state, prior, attempts, out, err)
}

// attempt makes one provider attempt through the middleware. reached
// reports that the effect's Call was invoked.
func (r *runner[In, Out]) attempt(ctx context.Context, rec Record, state *State, pkey Key, n int) (out Out, obs Observation, reached bool, err error) {
	r.obs = observer{}
	r.rec, r.state, r.pkey, r.reached = rec, *state, pkey, false
	var zero Out
	r.out = zero
	callCtx := context.WithValue(ctx, observerKey{}, &r.obs)
	if len(r.x.mw) == 0 {
		err = r.call(callCtx)
	} else {
		err = chain(r.x.mw, callCtx, AttemptInfo{Effect: r.e.Name, Key: pkey, Number: n, Lease: r.lease, Extend: r.extend}, r.call)
	}
	if !r.reached && err == nil {
		err = errors.New("a middleware returned without calling next")
	}
	var nr errNotReached
	if errors.As(err, &nr) {
		err = nr.err
	}
	*state = r.state
	return r.out, r.obs.obs, r.reached, err
}

// extend renews the held claim's lease (AttemptInfo.Extend).
func (r *runner[In, Out]) extend(ctx context.Context, lease time.Duration) error {
	_, err := r.x.store.Transition(ctx, Extend(r.rec.Key, r.rec.Token, lease))
	return err
}

// call is the innermost step of an attempt: record the start of the call
// where the effect asks for it, then call the provider.
func (r *runner[In, Out]) call(ctx context.Context) error {
	if r.reached {
		return errors.New("idempotency: middleware called next twice; the second call was refused")
	}
	if err := ctx.Err(); err != nil {
		return errNotReached{fmt.Errorf("context done before the call: %w", err)}
	}
	if r.state == StateClaimed {
		// Record the start of the call first, uncut by ctx: a worker that
		// dies after this line leaves a record in doubt, one that dies
		// before it leaves a record the next run takes over.
		if _, err := r.x.store.Transition(r.bg, MarkCalling(r.rec.Key, r.rec.Token)); err != nil {
			return errNotReached{fmt.Errorf("mark calling: %w", err)}
		}
		r.state = StateCalling
	}
	r.reached = true
	r.res.Calls++
	var err error
	r.out, err = r.e.Call(ctx, r.pkey, r.in)
	return err
}

func (r *runner[In, Out]) retryInRun(ctx context.Context, class Class, n int, after time.Duration) bool {
	if n >= r.pol.MaxAttempts || ctx.Err() != nil || after > r.pol.MaxBackoff {
		return false
	}
	switch class {
	case ClassNotActed:
		return true
	case ClassUnknown:
		// Only where the provider replays its first answer to the same key.
		return r.e.Expired == ExpiredRetry
	}
	return false
}

// callDeadline is when, on the executor's clock, the provider may forget the
// record's provider key: no attempt starts after it. Zero means never.
func (r *runner[In, Out]) callDeadline(rec Record) time.Time {
	d := DedupDeadline(rec, r.e.DedupWindow)
	if d.IsZero() {
		return time.Time{}
	}
	// rec.UpdatedAt is the store's "now" at the claim: measure what is
	// left of the window on the executor's clock, from when the store
	// answered (a claim made ahead of the run is older than now).
	at := r.claimedAt
	if at.IsZero() {
		at = r.x.now()
	}
	return at.Add(d.Sub(rec.UpdatedAt))
}

func (r *runner[In, Out]) evidence(gen int, class AttemptClass, obs Observation, err error) Attempt {
	a := Attempt{At: r.x.now(), Generation: gen, Class: class, Status: obs.Status, RequestID: obs.RequestID, Replayed: obs.Replayed}
	if err != nil {
		a.Error = truncate(redactKey(err.Error(), r.key), maxEvidenceError)
	}
	return a
}

// settle records what the run's attempts did to the held record.
func (r *runner[In, Out]) settle(ctx context.Context, rec Record, state State, prior bool, attempts []Attempt, out Out, err error) (Result[Out], error) {
	bg := r.bg
	if err == nil || errors.Is(err, ErrSkip) {
		return r.complete(bg, rec, out, err != nil, attempts)
	}
	class, after := Classify(err)
	last := attempts[len(attempts)-1]
	maybe := prior
	for _, a := range attempts {
		maybe = maybe || a.Class == AttemptUnknown
	}
	switch class {
	case ClassPermanent, ClassMismatch:
		// A refusal proves nothing was done only if no earlier attempt
		// under the key may have acted, or it is the provider's replay of
		// the first answer.
		if !maybe || last.Replayed {
			return r.failed(bg, rec, class, out, err)
		}
	case ClassReconcile:
		return r.park(bg, rec, err, true)
	}
	if state == StateClaimed || !maybe {
		// Nothing under this provider key may have acted.
		due := r.dueIn(after, rec.Claims)
		stored, terr := r.x.store.Transition(bg, withEvidence(Release(rec.Key, rec.Token, err.Error(), due), attempts))
		if terr != nil {
			return r.storeFailed(rec, "release", err, terr)
		}
		r.res.Record, r.res.Delay = stored, due
		return r.retryable(err)
	}
	ended := last.Status != 0
	if r.e.Expired == ExpiredRetry {
		due := r.dueIn(after, rec.Claims)
		stored, terr := r.x.store.Transition(bg, withEvidence(ReleaseUnknown(rec.Key, rec.Token, err.Error(), due, ended), attempts))
		if terr != nil {
			return r.storeFailed(rec, "release", err, terr)
		}
		r.res.Record, r.res.Delay = stored, due
		return r.retryable(err)
	}
	return r.park(bg, rec, err, ended)
}

func withEvidence(c Change, attempts []Attempt) Change {
	c.Evidence = attempts
	return c
}

func (r *runner[In, Out]) retryable(cause error) (Result[Out], error) {
	return r.fail(OutcomeRetryable, fmt.Errorf("idempotency: %s: %w: %w", r.e.Name, ErrRetryable, cause))
}

// storeFailed reports a store error met while recording a failed attempt:
// the claim stays held until its lease ends.
func (r *runner[In, Out]) storeFailed(rec Record, op string, cause, err error) (Result[Out], error) {
	if errors.Is(err, ErrClaimLost) {
		return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: %s after %w: %w", r.e.Name, op, cause, err))
	}
	return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: %s after %v: %w", r.e.Name, op, cause, err))
}

// dueIn is how long a released record waits: the provider's delay or the
// policy's backoff for the record's claims, whichever is longer.
func (r *runner[In, Out]) dueIn(after time.Duration, claims int) time.Duration {
	p := r.pol
	if p.RunBackoff <= 0 {
		return after
	}
	d := p.RunBackoff
	for i := 1; i < claims && d < p.MaxRunBackoff; i++ {
		d *= 2
	}
	d = min(d, p.MaxRunBackoff)
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64())) // ±20% jitter
	return max(d, after)
}

// park leaves the record in doubt. An effect with Find settles it on a later
// run (retryable); without Find an operator must (needs reconciliation).
func (r *runner[In, Out]) park(bg context.Context, rec Record, cause error, ended bool) (Result[Out], error) {
	c := withEvidence(Park(rec.Key, rec.Token, cause.Error(), ended), r.res.Attempts)
	stored, err := r.x.store.Transition(bg, c)
	if err != nil {
		return r.storeFailed(rec, "park", cause, err)
	}
	r.res.Record = stored
	if r.e.Find != nil {
		return r.fail(OutcomeRetryable, fmt.Errorf("idempotency: %s: %w: in doubt, a later run asks the provider: %w", r.e.Name, ErrRetryable, cause))
	}
	return r.fail(OutcomeNeedsReconciliation, fmt.Errorf("idempotency: %s: %w: %w", r.e.Name, ErrNeedsReconciliation, cause))
}

func (r *runner[In, Out]) failed(bg context.Context, rec Record, class Class, out Out, cause error) (Result[Out], error) {
	c := withEvidence(Fail(rec.Key, rec.Token, cause.Error()), r.res.Attempts)
	if r.e.OnFail != nil {
		c.Hook = func(ctx context.Context) error { return r.e.OnFail(ctx, r.in, cause) }
	}
	stored, err := r.x.store.Transition(bg, c)
	if err != nil {
		// Not recorded: the claim stays held until its lease ends; the
		// provider did nothing.
		return r.storeFailed(rec, "fail", cause, err)
	}
	r.res.Record = stored
	if class == ClassMismatch {
		return r.fail(OutcomeMismatch, fmt.Errorf("idempotency: %s: provider: %w", r.e.Name, cause))
	}
	return r.fail(OutcomePermanent, fmt.Errorf("idempotency: %s: %w", r.e.Name, cause))
}

// unencodable leaves in doubt a record whose effect happened but whose
// result the codec cannot encode: never an applied record without its
// result, and never a blind retry. Asking the provider again would meet
// the same codec, so only a person can settle it.
func (r *runner[In, Out]) unencodable(bg context.Context, rec Record, where string, err error) (Result[Out], error) {
	perr := fmt.Errorf("%s%w: %w", where, ErrEncodeResult, err)
	res, rerr := r.park(bg, rec, perr, true)
	if res.Outcome == OutcomeRetryable || res.Outcome == OutcomeNeedsReconciliation {
		return r.fail(OutcomeNeedsReconciliation, fmt.Errorf("idempotency: %s: %w: %w", r.e.Name, ErrNeedsReconciliation, perr))
	}
	return res, rerr
}

// complete records a success (or a skip) under the held claim.
func (r *runner[In, Out]) complete(bg context.Context, rec Record, out Out, skipped bool, attempts []Attempt) (Result[Out], error) {
	enc, err := r.codec.Encode(out)
	if err != nil {
		return r.unencodable(bg, rec, "", err)
	}
	c := Complete(rec.Key, rec.Token, enc)
	outcome := OutcomeApplied
	if skipped {
		c, outcome = CompleteSkipped(rec.Key, rec.Token, enc), OutcomeSkipped
	}
	c = withEvidence(c, attempts)
	if r.e.OnComplete != nil {
		c.Hook = func(ctx context.Context) error { return r.e.OnComplete(ctx, r.in, out) }
	}
	stored, err := r.x.store.Transition(bg, c)
	switch {
	case err == nil:
		r.res.Record, r.res.Value, r.res.Outcome = stored, out, outcome
		return r.res, nil
	case errors.Is(err, ErrClaimLost) && !skipped:
		return r.recover(bg, rec, out, enc, c.Hook, err)
	}
	if !skipped {
		r.lost = enc // the success is not recorded: keep it in the log
	}
	return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: complete: %w", r.e.Name, err))
}

// recover records a success whose completion was refused: the claim was
// lost (its lease expired and someone took over, or an operator settled
// the record). The provider acted, so the success must not be lost: it is
// recorded unless a live claim holds the key (its holder, which took over
// under the same provider key, records the provider's replay) or the
// record is already finished (it says the effect happened: the stored
// result stands, as for any repeat). Only a record that now holds another
// payload leaves the success unrecorded: it is kept in the error, the
// result and the log for an operator.
func (r *runner[In, Out]) recover(bg context.Context, rec Record, out Out, enc []byte, hook func(context.Context) error, lost error) (Result[Out], error) {
	c := withEvidence(Recover(rec.Key, rec.Token, r.key.Namespace(), r.fp, enc), r.res.Attempts)
	c.Hook = hook
	cur, err := r.x.store.Transition(bg, c)
	r.res.Record = cur
	switch {
	case err == nil:
		r.res.Value, r.res.Outcome = out, OutcomeApplied
		return r.res, nil
	case errors.Is(err, ErrClaimLive):
		r.res.Outcome, r.res.Delay = OutcomeInFlight, r.until(cur.LeaseUntil)
		return r.res, nil
	case errors.Is(err, ErrClaimLost) && cur.State.Done() && cur.FingerprintMatches(r.fp):
		v, derr := r.codec.Decode(cur.Result)
		if derr != nil {
			v = out
		}
		r.res.Value, r.res.Outcome = v, OutcomeAlreadyApplied
		return r.res, nil
	}
	r.lost = enc
	le := &LostResultError{Key: rec.Key, Result: enc, Current: cur}
	return r.fail(OutcomeNeedsReconciliation, fmt.Errorf("idempotency: %s: %w (complete: %v; recover: %v)", r.e.Name, le, lost, err))
}

// reconcile asks the provider about a record in doubt, under the claim the
// store handed over in StateReconciling: found, the record is applied with
// no call; not found, it is sent again under a new provider-key generation.
func (r *runner[In, Out]) reconcile(ctx context.Context, rec Record) (Result[Out], error) {
	r.res.Reconciled = true
	bg := r.bg
	out, found, err := r.e.Find(ctx, r.key, r.in)
	if err != nil {
		_, after := Classify(err)
		c := Park(rec.Key, rec.Token, "find: "+err.Error(), true)
		c.DueIn = r.dueIn(after, rec.Claims)
		stored, terr := r.x.store.Transition(bg, c)
		if terr != nil {
			return r.storeFailed(rec, "park after find", err, terr)
		}
		r.res.Record, r.res.Delay = stored, c.DueIn
		return r.fail(OutcomeRetryable, fmt.Errorf("idempotency: %s: %w: find: %w", r.e.Name, ErrRetryable, err))
	}
	if found {
		enc, err := r.codec.Encode(out)
		if err != nil {
			return r.unencodable(bg, rec, "found at the provider: ", err)
		}
		c := Found(rec.Key, rec.Token, enc)
		if r.e.OnComplete != nil {
			c.Hook = func(ctx context.Context) error { return r.e.OnComplete(ctx, r.in, out) }
		}
		stored, err := r.x.store.Transition(bg, c)
		if err != nil {
			return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: record found: %w", r.e.Name, err))
		}
		r.res.Record, r.res.Value, r.res.Outcome = stored, out, OutcomeReconciled
		return r.res, nil
	}
	next, err := r.x.store.Transition(bg, Resend(rec.Key, rec.Token, r.lease, r.e.DedupWindow))
	if err != nil {
		return r.fail(OutcomeError, fmt.Errorf("idempotency: %s: resend: %w", r.e.Name, err))
	}
	r.claimedAt = time.Time{} // the new generation's window starts now
	return r.execute(ctx, next)
}
