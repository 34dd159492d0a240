package proof

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// Provider faults, one intent each, in process: the executor and pgguard's
// store on PostgreSQL, the real stripe-go client, the fake Stripe. Every
// test ends with requireOnePerKey (one object, every request under the
// intent's key, POSTs == requests under the key) and the ledger read back.

// TestProvider409InFlightTakeover: worker A's request is executed by Stripe
// and its response held; A's lease expires on the ledger clock; worker B
// takes the claim over and calls with the same key: Stripe answers 409
// idempotency_key_in_use, which is retryable. A's response is then
// released; B's next in-run attempt gets Stripe's replay and records it;
// A's late completion is refused by the fencing token.
func TestProvider409InFlightTakeover(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "i409", Customer: "cus_409"}
	key := keyOf(in.ID)

	release := make(chan struct{})
	r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultDelayAfterWrite, Path: promoPath, Key: key, Release: release})
	// When B's request gets its 409, let A's held response go, and wait
	// until Stripe has finished A's request (its record, the only one that
	// executed, is reported after its key left flight), so that B's next
	// attempt can only be a replay, however slow the machine.
	aFinished := make(chan struct{})
	var finishOnce, conflictOnce sync.Once
	r.fake.OnRequest(func(rec stripefake.RequestRecord) {
		switch {
		case rec.Executed:
			finishOnce.Do(func() { close(aFinished) })
		case rec.Status == 409:
			conflictOnce.Do(func() {
				close(release)
				select {
				case <-aFinished:
				case <-time.After(time.Minute): // only if the fake is broken
					t.Errorf("A's request did not finish after its release")
				}
			})
		}
	})

	effA := r.effect(attempts(1), 0)
	effA.Lease = time.Minute
	type outcome struct {
		res idempotency.Result[promoResult]
		err error
	}
	aDone := make(chan outcome, 1)
	go func() {
		res, err := r.run(effA, in)
		aDone <- outcome{res, err}
	}()
	require.Eventually(t, func() bool {
		return r.fake.InFlight() == 1 && r.fake.Created(stripefake.KindPromotionCode) == 1
	}, 10*time.Second, time.Millisecond, "A's request never reached Stripe")
	aClaim := r.row(key)
	require.Equal(t, "calling", aClaim.State)

	// A's lease runs out on the ledger's clock; B takes over.
	r.clock.Advance(2 * time.Minute)
	effB := r.effect(attempts(3), 0)
	effB.Lease = time.Minute
	b, err := r.run(effB, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, b.Outcome)
	require.Equal(t, 2, b.Calls, "B: a 409, then the replay")
	require.True(t, b.Value.Replayed, "B recorded Stripe's replay of A's request")
	require.Equal(t, 2, b.Record.Claims, "B took A's claim over")
	require.NotEqual(t, aClaim.Token, b.Record.Token, "a takeover gets a new fencing token")

	a := <-aDone
	// A's completion is refused (B took the claim over). Its recovery finds
	// B's claim still live (in flight: B records the replay) or already
	// finished (already applied): either way nothing is lost or doubled.
	require.NoError(t, a.err)
	require.Contains(t, []idempotency.Outcome{idempotency.OutcomeInFlight, idempotency.OutcomeAlreadyApplied}, a.res.Outcome)
	require.Equal(t, 1, a.res.Calls)

	require.Equal(t, []string{"200 executed", "409 idempotency_key_in_use", "200 replayed"}, requestSummary(r.fake, key))
	posts := requireOnePerKey(t, r.fake, key)
	lr := r.requireApplied(key)
	require.Equal(t, b.Record.Token, lr.Token, "the row is B's")
	require.Equal(t, b.Value.ID, objectOf(t, r.fake, key).ID)
	t.Logf("409 in flight: 1 object, %d POSTs %v, ledger applied by the takeover (claim %d); A's late run: %v",
		posts, requestSummary(r.fake, key), lr.Claims, a.res.Outcome)
}

// TestProvider429RetryAfter: a rate limit (429 rate_limit with Retry-After)
// and a lock timeout (429 lock_timeout), both retryable and never saved by
// Stripe.
func TestProvider429RetryAfter(t *testing.T) {
	t.Parallel()

	// Retried in the same run, after waiting the provider's Retry-After
	// (1 s) rather than the policy's 20 ms backoff.
	t.Run("in_run_honours_retry_after", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		in := intent{ID: "i429a", Customer: "cus_429a"}
		key := keyOf(in.ID)
		r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, Path: promoPath, Key: key, RetryAfter: time.Second})
		start := time.Now()
		res, err := r.run(r.effect(attempts(3), 0), in)
		elapsed := time.Since(start)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 2, res.Calls)
		require.GreaterOrEqual(t, elapsed, time.Second, "the executor waited for Retry-After")
		require.Equal(t, []string{"429 rate_limit", "200 executed"}, requestSummary(r.fake, key))
		posts := requireOnePerKey(t, r.fake, key)
		lr := r.requireApplied(key)
		require.Equal(t, 1, lr.Claims, "one claim, held across the wait")
		t.Logf("429 Retry-After 1s, in run: 1 object, %d POSTs, run took %v", posts, elapsed.Round(time.Millisecond))
	})

	// A Retry-After longer than the policy's MaxBackoff is not waited for
	// while holding the claim: the claim is released (key kept) and the
	// next run succeeds.
	t.Run("longer_than_max_backoff_released_then_next_run", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		in := intent{ID: "i429b", Customer: "cus_429b"}
		key := keyOf(in.ID)
		r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, Path: promoPath, Key: key, RetryAfter: 30 * time.Second})
		eff := r.effect(idempotency.RetryPolicy{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond, MaxBackoff: time.Second}, 0)
		start := time.Now()
		res, err := r.run(eff, in)
		require.Less(t, time.Since(start), 10*time.Second, "30 s were not waited for")
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
		require.Equal(t, 1, res.Calls)
		class, after := idempotency.Classify(err)
		require.Equal(t, idempotency.ClassNotActed, class)
		require.Equal(t, 30*time.Second, after, "Retry-After is carried to the caller")
		lr := r.row(key)
		require.Equal(t, "released", lr.State, "Stripe did nothing: the key is free once due")
		require.False(t, lr.Leased)
		require.Zero(t, r.fake.Created(stripefake.KindPromotionCode))

		// The Retry-After is remembered: a run 10 s later makes no call.
		r.clock.Advance(10 * time.Second)
		res, err = r.run(eff, in)
		require.ErrorIs(t, err, idempotency.ErrNotDue)
		require.Equal(t, idempotency.OutcomeNotDue, res.Outcome)
		require.Zero(t, res.Calls)
		require.Equal(t, 20*time.Second, res.Delay)
		r.clock.Advance(21 * time.Second)
		res, err = r.run(eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, []string{"429 rate_limit", "200 executed"}, requestSummary(r.fake, key))
		posts := requireOnePerKey(t, r.fake, key)
		require.Equal(t, 2, r.requireApplied(key).Claims)
		t.Logf("429 Retry-After 30s > MaxBackoff: released, next run applied; 1 object, %d POSTs", posts)
	})

	t.Run("lock_timeout_in_run", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		in := intent{ID: "i429c", Customer: "cus_429c"}
		key := keyOf(in.ID)
		r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultLockTimeout, Path: promoPath, Key: key})
		res, err := r.run(r.effect(attempts(3), 0), in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 2, res.Calls)
		require.Equal(t, []string{"429 lock_timeout", "200 executed"}, requestSummary(r.fake, key))
		requireOnePerKey(t, r.fake, key)
		r.requireApplied(key)
	})
}

// TestProvider5xxBeforeWrite: Stripe fails before doing anything and saves
// nothing under the key: retryable, and the retry executes.
func TestProvider5xxBeforeWrite(t *testing.T) {
	t.Parallel()

	t.Run("next_run", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		in := intent{ID: "i5xxb", Customer: "cus_5xxb"}
		key := keyOf(in.ID)
		r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Path: promoPath, Key: key})
		eff := r.effect(attempts(1), 0)
		res, err := r.run(eff, in)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
		lr := r.row(key)
		require.Equal(t, "unknown", lr.State, "a fresh 500 may have acted: retried under the same key")
		require.False(t, lr.Leased, "the answer came back: the attempt has ended")
		require.Zero(t, r.fake.Created(stripefake.KindPromotionCode))

		res, err = r.run(eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.False(t, res.Value.Replayed)
		require.Equal(t, []string{"500", "200 executed"}, requestSummary(r.fake, key))
		posts := requireOnePerKey(t, r.fake, key)
		require.Equal(t, 2, r.requireApplied(key).Claims)
		t.Logf("5xx before write: released, next run applied; 1 object, %d POSTs", posts)
	})

	t.Run("in_run", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		in := intent{ID: "i5xxc", Customer: "cus_5xxc"}
		key := keyOf(in.ID)
		r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Path: promoPath, Key: key, Times: 2, Status: 503})
		res, err := r.run(r.effect(attempts(3), 0), in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 3, res.Calls)
		require.Equal(t, []string{"503", "503", "200 executed"}, requestSummary(r.fake, key))
		requireOnePerKey(t, r.fake, key)
		require.Equal(t, 1, r.requireApplied(key).Claims)
	})
}

// TestProvider5xxAfterWriteIsReconciled: Stripe creates the code, then
// answers 500 and saves that 500 under the key (Stripe-Should-Retry:
// false): the key will answer 500 for as long as Stripe remembers it. The
// executor does not retry (even with 3 attempts allowed) and leaves the
// record in doubt; the next run asks Stripe (Find), finds the code and
// records it, with no creating POST.
func TestProvider5xxAfterWriteIsReconciled(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "i5xxr", Customer: "cus_5xxr"}
	key := keyOf(in.ID)
	r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorAfterWrite, Path: promoPath, Key: key})
	eff := r.effect(attempts(3), 0)

	res, err := r.run(eff, in)
	require.ErrorIs(t, err, idempotency.ErrRetryable, "in doubt, for the next run to settle")
	require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
	require.Equal(t, 1, res.Calls, "a saved 500 is not retried")
	lr := r.row(key)
	require.Equal(t, "in_doubt", lr.State)
	require.False(t, lr.Leased)
	require.Nil(t, lr.Result)
	posts := r.fake.Calls(stripefake.OpCreate, "")

	res, err = r.run(eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
	require.Zero(t, res.Calls)
	require.Equal(t, objectOf(t, r.fake, key).ID, res.Value.ID)
	require.Equal(t, posts, r.fake.Calls(stripefake.OpCreate, ""), "no creating POST while reconciling")
	require.Equal(t, []string{"500 executed"}, requestSummary(r.fake, key))
	require.Empty(t, r.stuckKeys())
	requireOnePerKey(t, r.fake, key)
	r.requireApplied(key)
}

// TestProvider5xxAfterWriteWithoutFindParks: the same saved 500 for an
// effect that cannot ask Stripe. The record waits for an operator: no
// later run calls Stripe again, even past the lease; ListStuck lists it;
// the operator settles it from Stripe.
func TestProvider5xxAfterWriteWithoutFindParks(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "i5xxa", Customer: "cus_5xxa"}
	key := keyOf(in.ID)
	r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorAfterWrite, Path: promoPath, Key: key})
	eff := r.effect(attempts(3), 0)
	eff.Find = nil

	res, err := r.run(eff, in)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
	require.Equal(t, 1, res.Calls, "a saved 500 is not retried")
	lr := r.row(key)
	require.Equal(t, "in_doubt", lr.State)
	require.False(t, lr.Leased)
	require.Nil(t, lr.Result)
	require.Equal(t, []string{key}, r.stuckKeys())

	// Later runs, even long past the lease, do not call Stripe.
	for _, d := range []time.Duration{0, time.Hour} {
		r.clock.Advance(d)
		res, err = r.run(eff, in)
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
		require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
		require.Zero(t, res.Calls)
	}
	require.Equal(t, []string{"500 executed"}, requestSummary(r.fake, key))
	require.Equal(t, 1, r.row(key).Claims, "never taken over")

	id := r.settleFromStripe(key, in.Customer)
	res, err = r.run(eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Equal(t, id, res.Value.ID)
	require.Empty(t, r.stuckKeys())
	posts := requireOnePerKey(t, r.fake, key)
	r.requireApplied(key)
	t.Logf("5xx after write without Find: in doubt (NeedsReconciliation, listed stuck), 2 later runs made no call, settled by the operator; 1 object, %d POST", posts)
}

// TestProviderDelayPastClientTimeout: Stripe executes the request but holds
// the response longer than the client's timeout. The client gives up (a
// retryable network error) although the code exists. The next run, while
// Stripe still holds the first request, gets 409; the one after it gets the
// replay.
func TestProviderDelayPastClientTimeout(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "itimeout", Customer: "cus_timeout"}
	key := keyOf(in.ID)
	release := make(chan struct{})
	r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultDelayAfterWrite, Path: promoPath, Key: key, Release: release})

	// The client's deadline passes once Stripe has executed the request
	// and holds the response: an event, not a wall-clock timeout, which a
	// loaded machine could overrun before Stripe even executed. The
	// request's context ends as a deadline does (context.DeadlineExceeded).
	deadline := make(chan struct{})
	impatient := r.effect(attempts(1), 0)
	call := impatient.Call
	impatient.Call = func(ctx context.Context, k idempotency.Key, in intent) (promoResult, error) {
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-deadline:
				cancel(context.DeadlineExceeded)
			case <-ctx.Done():
			}
		}()
		return call(ctx, k, in)
	}
	type outcome struct {
		res idempotency.Result[promoResult]
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := r.run(impatient, in)
		done <- outcome{res, err}
	}()
	require.Eventually(t, func() bool {
		return r.fake.InFlight() == 1 && r.fake.Created(stripefake.KindPromotionCode) == 1
	}, 10*time.Second, time.Millisecond, "the request never reached Stripe")
	close(deadline)
	o := <-done
	res, err := o.res, o.err
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the client gave up, Stripe did not answer")
	require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
	require.Equal(t, 1, r.fake.Created(stripefake.KindPromotionCode), "the code exists although the client gave up")
	require.Equal(t, 1, r.fake.InFlight(), "Stripe still holds the request")
	lr := r.row(key)
	require.Equal(t, "unknown", lr.State, "released for a retry under the same key")
	require.True(t, lr.Leased, "no answer came back: the lease bounds the attempt a Find would wait for")

	// The next run (any worker, a patient client) while Stripe still holds it.
	next := r.effect(attempts(1), 0)
	res, err = r.run(next, in)
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)

	close(release)
	require.Eventually(t, func() bool { return r.fake.InFlight() == 0 }, 10*time.Second, time.Millisecond)
	res, err = r.run(next, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.True(t, res.Value.Replayed)

	require.Equal(t, []string{"200 executed", "409 idempotency_key_in_use", "200 replayed"}, requestSummary(r.fake, key))
	posts := requireOnePerKey(t, r.fake, key)
	require.Equal(t, 3, r.requireApplied(key).Claims)
	t.Logf("delay past the client's deadline: 1 object, %d POSTs %v", posts, requestSummary(r.fake, key))
}

// TestProviderResponseLost: Stripe creates the code and saves the response,
// but the connection drops before the client reads it (a network error).
func TestProviderResponseLost(t *testing.T) {
	t.Parallel()

	t.Run("rerun", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		in := intent{ID: "ilost", Customer: "cus_lost"}
		key := keyOf(in.ID)
		r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: promoPath, Key: key})
		eff := r.effect(attempts(1), 0)
		res, err := r.run(eff, in)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
		require.Equal(t, 1, r.fake.Created(stripefake.KindPromotionCode))
		lr := r.row(key)
		require.Equal(t, "unknown", lr.State)
		require.True(t, lr.Leased, "no answer came back")

		res, err = r.run(eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.True(t, res.Value.Replayed)
		require.Equal(t, []string{"no response executed", "200 replayed"}, requestSummary(r.fake, key))
		posts := requireOnePerKey(t, r.fake, key)
		r.requireApplied(key)
		t.Logf("response lost, rerun: 1 object, %d POSTs", posts)
	})

	t.Run("in_run", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		in := intent{ID: "ilost2", Customer: "cus_lost2"}
		key := keyOf(in.ID)
		r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: promoPath, Key: key})
		res, err := r.run(r.effect(attempts(2), 0), in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 2, res.Calls)
		require.True(t, res.Value.Replayed)
		require.Equal(t, []string{"no response executed", "200 replayed"}, requestSummary(r.fake, key))
		requireOnePerKey(t, r.fake, key)
		require.Equal(t, 1, r.requireApplied(key).Claims)
	})
}
