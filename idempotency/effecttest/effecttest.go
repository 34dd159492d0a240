// Package effecttest is a contract test for teams' own effects. Call Run
// from a _test.go file with your effect, a few sample inputs, a store and a
// way to count what the provider really did; it drives the effect through
// the deliveries that break hand-written code (repeats, concurrent and
// overlapping deliveries, a crash between the call and the record, a
// changed payload, a retryable failure) and fails with a message naming
// the rule that was broken.
//
//	func TestRefundEffectContract(t *testing.T) {
//		fake := stripefake.New()
//		defer fake.Close()
//		fake.AddPaymentIntent("pi_1", 10_000, "usd")
//		api := stripeeffect.NewAPI("sk_test", &stripeeffect.APIConfig{URL: fake.URL()})
//		effecttest.Run(t, effecttest.Case[refund, stripeeffect.RefundResult]{
//			Effect: newRefundEffect(api),
//			Inputs: []refund{{"ord_1", "rr_1", 500}, {"ord_1", "rr_2", 300}, ...},
//			Mutate: func(r refund) refund { r.Amount++; return r },
//			NewStore: func(now func() time.Time) idempotency.Store {
//				return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now})
//			},
//			Effects: func() int { return fake.Created(stripefake.KindRefund) },
//		})
//	}
//
// It depends on the standard library and package idempotency only.
package effecttest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/storetest"
)

// TB is the part of testing.TB that Run uses; *testing.T satisfies it.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
}

// Case describes the effect under test.
type Case[In, Out any] struct {
	// Effect is the team's effect, exactly as production builds it.
	Effect *idempotency.Effect[In, Out]
	// Inputs are at least 4 distinct intents (different business
	// identities). Each ends up performed exactly once.
	Inputs []In
	// Mutate returns a copy of an input with the same business identity
	// (so the same key) and a different payload. Nil skips the mismatch
	// case; set it whenever the effect has a Fingerprint.
	Mutate func(In) In
	// NewStore returns an empty store whose clock is now (pgguard.New with
	// Config.Now, or idempotency.NewMemStore with MemStoreConfig.Now).
	// Called once per Run.
	NewStore func(now func() time.Time) idempotency.Store
	// Effects returns how many effects the provider has really performed
	// so far (objects created at a fake Stripe, hits at an httptest
	// receiver). It is the ground truth every case is checked against.
	Effects func() int
	// Concurrency is the number of simultaneous deliveries in the
	// concurrent case. Zero means 16.
	Concurrency int
}

// Run checks the contract: every intent performed exactly once whatever the
// delivery pattern, keys that depend only on business identity, payload
// changes refused, and stored results that agree with the first result.
// t is usually a *testing.T. It returns false if any rule was broken.
func Run[In, Out any](t TB, c Case[In, Out]) bool {
	t.Helper()
	if c.Effect == nil || c.NewStore == nil || c.Effects == nil {
		t.Errorf("effecttest: Case needs Effect, NewStore and Effects")
		return false
	}
	if len(c.Inputs) < 4 {
		t.Errorf("effecttest: Case needs at least 4 distinct inputs, got %d", len(c.Inputs))
		return false
	}
	r := &runner[In, Out]{t: t, c: c, ok: true, clock: storetest.NewClock(), first: map[string]Out{}}
	r.store = &crashStore{Store: c.NewStore(r.clock.Now)}
	x, err := idempotency.NewExecutor(r.store, nil)
	if err != nil {
		t.Errorf("effecttest: %v", err)
		return false
	}
	r.x = x
	r.lease = c.Effect.Lease
	if r.lease == 0 {
		r.lease = 5 * time.Minute
	}
	r.base = c.Effects()

	r.keysAreStable()
	if !r.ok {
		return false // every other case depends on stable keys
	}
	r.deliveredTwice(c.Inputs[0])
	r.deliveredConcurrently(c.Inputs[1])
	r.crashBeforeRecord(c.Inputs[2])
	r.retryableThenSuccess(c.Inputs[3])
	if c.Mutate != nil {
		r.payloadChanged(c.Inputs[0])
	}
	r.overlappingSweeps()
	r.storedResultsAgree()
	return r.ok
}

type runner[In, Out any] struct {
	t     TB
	c     Case[In, Out]
	x     *idempotency.Executor
	store *crashStore
	clock *storetest.Clock
	lease time.Duration
	base  int // provider effects before the run
	done  int // intents performed so far
	ok    bool

	mu    sync.Mutex
	first map[string]Out // first result per key
}

func (r *runner[In, Out]) fail(format string, args ...any) {
	r.t.Helper()
	r.ok = false
	r.t.Errorf("effecttest: %s: "+format, append([]any{r.c.Effect.Name}, args...)...)
}

// effects returns the provider effects performed since Run started.
func (r *runner[In, Out]) effects() int { return r.c.Effects() - r.base }

// expect checks the ground truth after a case.
func (r *runner[In, Out]) expect(caseName string) {
	r.t.Helper()
	if got := r.effects(); got != r.done {
		r.fail("%s: the provider performed %d effects for %d intents: each intent must happen exactly once", caseName, got, r.done)
		r.done = got // report each excess once
	}
}

func (r *runner[In, Out]) run(in In) (idempotency.Result[Out], error) {
	res, err := idempotency.Run(context.Background(), r.x, r.c.Effect, in)
	if res.Outcome == idempotency.OutcomeApplied || res.Outcome == idempotency.OutcomeSkipped {
		r.mu.Lock()
		if _, seen := r.first[res.Key.String()]; !seen {
			r.first[res.Key.String()] = res.Value
		}
		r.mu.Unlock()
	}
	return res, err
}

func (r *runner[In, Out]) keysAreStable() {
	r.t.Helper()
	seen := map[string]int{}
	for i, in := range r.c.Inputs {
		k1, fp1, err := r.c.Effect.Identity(in)
		if err != nil {
			r.fail("input %d: cannot build its key: %v", i, err)
			continue
		}
		time.Sleep(2 * time.Millisecond) // a clock-derived key changes across this gap
		k2, fp2, err := r.c.Effect.Identity(in)
		if err != nil || k1 != k2 {
			r.fail("the key for input %d differs between two calls (%v then %v): it must depend only on business identity, never on the clock or randomness", i, k1.LogValue(), k2.LogValue())
			continue
		}
		if !reflect.DeepEqual(fp1, fp2) {
			r.fail("the fingerprint for input %d differs between two calls: it must depend only on the payload", i)
		}
		if j, dup := seen[k1.String()]; dup {
			r.fail("inputs %d and %d have the same key: Inputs must be distinct intents (or the key misses part of the business identity)", j, i)
		}
		seen[k1.String()] = i
	}
}

func (r *runner[In, Out]) deliveredTwice(in In) {
	r.t.Helper()
	first, err := r.run(in)
	if err != nil || first.Outcome != idempotency.OutcomeApplied && first.Outcome != idempotency.OutcomeSkipped {
		r.fail("first delivery of a new intent: want applied, got %v (%v)", first.Outcome, err)
	}
	r.done++
	second, err := r.run(in)
	if err != nil || second.Outcome != idempotency.OutcomeAlreadyApplied {
		r.fail("second delivery of one intent: want already_applied, got %v (%v)", second.Outcome, err)
	}
	if second.Calls != 0 {
		r.fail("two deliveries of one intent made %d provider calls: the repeat must make none", 1+second.Calls)
	}
	if first.Outcome == idempotency.OutcomeApplied && !reflect.DeepEqual(first.Value, second.Value) {
		r.fail("the repeat returned %v, not the stored first result %v", second.Value, first.Value)
	}
	r.expect("two deliveries in a row")
}

func (r *runner[In, Out]) deliveredConcurrently(in In) {
	r.t.Helper()
	n := r.c.Concurrency
	if n <= 0 {
		n = 16
	}
	var calls atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, _ := r.run(in)
			calls.Add(int32(res.Calls))
		}()
	}
	wg.Wait()
	r.done++
	if calls.Load() != 1 {
		r.fail("%d concurrent deliveries of one intent made %d provider calls: the claim must stop all but one before the call", n, calls.Load())
	}
	// Anyone who saw it in flight must now see it applied.
	if res, err := r.run(in); err != nil || res.Outcome != idempotency.OutcomeAlreadyApplied {
		r.fail("after %d concurrent deliveries the intent is %v (%v), want already_applied", n, res.Outcome, err)
	}
	r.expect("concurrent deliveries")
}

func (r *runner[In, Out]) crashBeforeRecord(in In) {
	r.t.Helper()
	r.store.failNextComplete.Store(true)
	res, _ := r.run(in)
	if res.Calls != 1 {
		r.fail("crash case: the first delivery made %d provider calls, want 1", res.Calls)
	}
	r.done++
	// Redelivered while the dead worker's lease is live: nobody calls.
	if res, _ := r.run(in); res.Outcome != idempotency.OutcomeInFlight {
		r.fail("after a crash between the provider call and the record, a redelivery inside the lease must be in_flight, got %v", res.Outcome)
	}
	r.clock.Advance(2*r.lease + time.Minute)
	res, err := r.run(in)
	switch r.c.Effect.Expired {
	case idempotency.ExpiredRetry:
		if err != nil || res.Outcome != idempotency.OutcomeApplied {
			r.fail("after a crash and the lease's expiry, the takeover must apply, got %v (%v)", res.Outcome, err)
		}
	default:
		if res.Outcome != idempotency.OutcomeNeedsReconciliation || res.Calls != 0 {
			r.fail("ExpiredPark: after a crash the intent must wait for reconciliation without a call, got %v with %d calls", res.Outcome, res.Calls)
		}
	}
	r.expect("crash after the provider call, before the record (the provider must deduplicate the takeover's call, so the key must reach it)")
}

func (r *runner[In, Out]) retryableThenSuccess(in In) {
	r.t.Helper()
	var keys []string
	var injected atomic.Bool
	eff := *r.c.Effect
	eff.Call = func(ctx context.Context, k idempotency.Key, in In) (Out, error) {
		keys = append(keys, k.String())
		if injected.CompareAndSwap(false, true) {
			var zero Out
			return zero, idempotency.Retryable(errors.New("effecttest: injected 503"), 0)
		}
		return r.c.Effect.Call(ctx, k, in)
	}
	res, err := idempotency.Run(context.Background(), r.x, &eff, in)
	switch res.Outcome {
	case idempotency.OutcomeRetryable:
		// Released: the next delivery must apply.
		res, err = r.run(in)
		if err != nil || res.Outcome != idempotency.OutcomeApplied {
			r.fail("after a retryable failure the next delivery must apply, got %v (%v)", res.Outcome, err)
		}
	case idempotency.OutcomeApplied:
		// The effect's RetryPolicy retried in-run, under the same claim.
		if res.Calls < 2 {
			r.fail("a retryable failure was reported applied after %d provider call(s)", res.Calls)
		}
		r.mu.Lock()
		r.first[res.Key.String()] = res.Value
		r.mu.Unlock()
	default:
		r.fail("a retryable provider failure must release the claim or be retried in-run, got %v (%v)", res.Outcome, err)
	}
	r.done++
	for _, k := range keys {
		if k != res.Key.String() {
			r.fail("a retry used another key than the failed attempt: the key must not change between attempts")
			break
		}
	}
	r.expect("retryable failure then success")
}

func (r *runner[In, Out]) payloadChanged(in In) {
	r.t.Helper()
	changed := r.c.Mutate(in)
	k1, fp1, err1 := r.c.Effect.Identity(in)
	k2, fp2, err2 := r.c.Effect.Identity(changed)
	if err1 != nil || err2 != nil {
		r.fail("mismatch case: %v %v", err1, err2)
		return
	}
	if k1 != k2 {
		r.fail("Mutate changed the key: it must change the payload only")
		return
	}
	if reflect.DeepEqual(fp1, fp2) {
		r.fail("the same key with a different payload has the same fingerprint: the Fingerprint must cover the payload (amount, coupon...)")
		return
	}
	res, err := r.run(changed)
	var me *idempotency.MismatchError
	if !errors.As(err, &me) || res.Calls != 0 {
		r.fail("the same key with a different payload must be refused with a *MismatchError and no provider call, got %v with %d calls (%v)", res.Outcome, res.Calls, err)
	}
	r.expect("same key, different payload")
}

func (r *runner[In, Out]) overlappingSweeps() {
	r.t.Helper()
	var wg sync.WaitGroup
	var calls atomic.Int32
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, in := range r.c.Inputs {
				res, _ := r.run(in)
				calls.Add(int32(res.Calls))
			}
		}()
	}
	wg.Wait()
	fresh := len(r.c.Inputs) - 4
	r.done += fresh
	if int(calls.Load()) != fresh {
		r.fail("two overlapping sweeps over %d intents (%d new) made %d provider calls, want %d", len(r.c.Inputs), fresh, calls.Load(), fresh)
	}
	// Any intent the sweeps saw in flight is finished by a last pass.
	for _, in := range r.c.Inputs {
		_, _ = r.run(in)
	}
	r.expect("two overlapping sweeps")
}

func (r *runner[In, Out]) storedResultsAgree() {
	r.t.Helper()
	keys := make([]string, 0, len(r.c.Inputs))
	for _, in := range r.c.Inputs {
		k, _, err := r.c.Effect.Identity(in)
		if err == nil {
			keys = append(keys, k.String())
		}
	}
	recs, err := r.store.Lookup(context.Background(), keys)
	if err != nil {
		r.fail("lookup: %v", err)
		return
	}
	codec := r.c.Effect.Codec
	if codec == nil {
		codec = idempotency.JSONCodec[Out]{}
	}
	for i, k := range keys {
		rec, ok := recs[k]
		if !ok || !rec.Status.Done() {
			if r.c.Effect.Expired != idempotency.ExpiredRetry && i == 2 {
				continue // the crash case waits for reconciliation under ExpiredPark
			}
			r.fail("input %d has no applied record at the end (%v)", i, rec.Status)
			continue
		}
		got, err := codec.Decode(rec.Result)
		if err != nil {
			r.fail("input %d: stored result does not decode: %v", i, err)
			continue
		}
		r.mu.Lock()
		want, seen := r.first[k]
		r.mu.Unlock()
		if seen && !reflect.DeepEqual(got, want) {
			r.fail("input %d: the stored result %v differs from the first applied result %v", i, got, want)
		}
	}
}

// crashStore fails one Complete on request, leaving the claim pending as a
// worker that died after the provider call would.
type crashStore struct {
	idempotency.Store
	failNextComplete atomic.Bool
}

func (s *crashStore) Complete(ctx context.Context, req idempotency.CompleteRequest) (idempotency.Record, error) {
	if s.failNextComplete.CompareAndSwap(true, false) {
		return idempotency.Record{}, fmt.Errorf("effecttest: injected crash before the record")
	}
	return s.Store.Complete(ctx, req)
}
