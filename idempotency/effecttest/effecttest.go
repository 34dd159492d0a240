// Package effecttest is a contract test for teams' own effects. Call Run
// from a _test.go file with your effect, a few sample inputs, a store and a
// way to count what the provider really did; it drives the effect through
// the deliveries that break hand-written code (two deliveries in a row,
// many concurrent deliveries, a crash between the provider call and the
// record, a retryable failure, a changed payload, two overlapping sweeps),
// checks each against your count, and fails with a message naming the rule
// that was broken.
//
//	func TestWelcomeEmailContract(t *testing.T) {
//		// The email API deduplicates by Idempotency-Key. Count distinct
//		// keys, not requests: a replay under the same key hits it again.
//		var mu sync.Mutex
//		sent := map[string]bool{}
//		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//			mu.Lock()
//			defer mu.Unlock()
//			sent[r.Header.Get("Idempotency-Key")] = true
//		}))
//		defer srv.Close()
//
//		effecttest.Run(t, effecttest.Case[signup, int]{
//			Effect: newWelcomeEmail(srv.URL), // exactly as production builds it
//			Inputs: []signup{{"u1", "a@example.com"}, {"u2", "b@example.com"}, {"u3", "c@example.com"}, {"u4", "d@example.com"}},
//			Mutate: func(s signup) signup { s.Email = "other+" + s.Email; return s }, // same key, other payload
//			NewStore: func(now func() time.Time) idempotency.Store {
//				return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now}) // or pgguard.New(pool, &pgguard.Config{Now: now})
//			},
//			Effects: func() int { mu.Lock(); defer mu.Unlock(); return len(sent) },
//		})
//	}
//
// The example in this package's documentation (example_test.go) is this
// test, with the effect it checks.
//
// # Count distinct effects, not requests
//
// Case.Effects is the ground truth: how many distinct effects the provider
// performed (objects created at the fake Stripe, fake.Created(kind);
// distinct Idempotency-Keys at a receiver that deduplicates by key). It is
// not the number of HTTP requests: after a crash, an effect whose provider
// deduplicates is sent again under the same key, the receiver is hit again
// and replays its first answer, and nothing new happens. Counting hits
// would report that replay as a second effect. Count hits only at a
// receiver that ignores keys, where each hit is an effect.
//
// # A crash between the provider call and the record
//
// The crash case makes the completion of one run fail after the provider
// acted, as a worker killed at that moment would, then moves the fake
// clock past the claim's lease and delivers again. What happens then is
// the effect's policy:
//
//   - ExpiredRetry (the provider deduplicates by key): the claim is taken
//     over and the call sent again under the same key; the provider
//     replays the first effect. Recovered automatically, as long as a
//     whole run still fits in the provider's DedupWindow.
//   - ExpiredPark or ExpiredRetryUncalled with Effect.Find: the provider is
//     asked whether the effect exists, and it is recorded without a call.
//     Recovered automatically.
//   - Otherwise the record is in doubt and an operator settles it
//     (idempotency.Operator): every crash becomes a person's task.
//
// Run never accepts a second effect, and by default (RecoverAutomatically)
// it fails an effect that leaves the crash to an operator; a Case states
// CrashRecovery: ParkForOperator to accept that. It reports which happened.
//
// # What it reports
//
// Every case logs what it did and saw (outcomes, provider calls, effects
// counted) with t.Logf: run go test -v to read it. A failure says which
// rule was broken.
//
// The package depends on the standard library and packages idempotency and
// idempotency/clocktest only.
package effecttest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
)

// TB is the part of testing.TB that Run uses; *testing.T satisfies it.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
}

// CrashRecovery is what a team expects after a worker crashed between the
// provider call and the record.
type CrashRecovery uint8

const (
	// RecoverAutomatically (the zero value): a later delivery finishes the
	// intent with no second effect, by a takeover the provider
	// deduplicates (ExpiredRetry) or by asking the provider (Effect.Find).
	// An effect that leaves the record in doubt for an operator fails.
	RecoverAutomatically CrashRecovery = iota
	// ParkForOperator accepts that the record is left in doubt for an
	// operator (no Find, a provider that ignores keys). Run then checks
	// that an operator can find it (Operator.ListStuck) and settle it, when
	// the store implements idempotency.Operator. An effect that recovers by
	// itself passes too, with a log saying the option is not needed.
	ParkForOperator
)

func (c CrashRecovery) String() string {
	switch c {
	case RecoverAutomatically:
		return "RecoverAutomatically"
	case ParkForOperator:
		return "ParkForOperator"
	}
	return fmt.Sprintf("CrashRecovery(%d)", uint8(c))
}

// Case describes the effect under test.
type Case[In, Out any] struct {
	// Effect is the team's effect, exactly as production builds it.
	// Required.
	Effect *idempotency.Effect[In, Out]

	// Inputs are at least 4 distinct intents (different business
	// identities). Each ends up performed exactly once. Required.
	Inputs []In

	// Mutate returns a copy of an input with the same business identity
	// (so the same key) and another payload, for the mismatch case. It is
	// required when the effect has a Fingerprint, unless SkipMismatch
	// says why not. Nil and an effect without a Fingerprint: the case is
	// skipped, with a log.
	Mutate func(In) In

	// SkipMismatch, when not empty, skips the mismatch case and says why
	// (logged). Default: empty, so an effect with a Fingerprint and no
	// Mutate fails. It may not be set together with Mutate.
	SkipMismatch string

	// NewStore returns an empty store whose clock is now
	// (idempotency.NewMemStore with MemStoreConfig.Now, or pgguard.New with
	// Config.Now). Called once per Run. Required.
	NewStore func(now func() time.Time) idempotency.Store

	// Effects returns how many distinct effects the provider has performed
	// so far: objects created at a fake Stripe (fake.Created(kind)),
	// distinct Idempotency-Keys at a receiver that deduplicates by key,
	// hits only at a receiver that ignores keys. Never count requests at a
	// receiver that deduplicates: a takeover after a crash sends the same
	// key again, the receiver is hit again and replays the first answer,
	// and counting that hit reports a second effect that did not happen.
	// It is the ground truth every case is checked against. Required.
	Effects func() int

	// CrashRecovery is what the team expects after a crash between the
	// provider call and the record. Default RecoverAutomatically.
	CrashRecovery CrashRecovery

	// Config is the executor's configuration as production builds it
	// (Lease, Retry, Middleware, Logger). Nil means the zero Config. Run
	// sets its Now to the fake clock it gives NewStore, so the executor and
	// the store agree on leases and windows.
	Config *idempotency.Config

	// Clock is the fake clock the run moves (past a lease, past a due
	// time); pass the one your fake provider reads, if it has one. Nil
	// means a new clocktest.Clock.
	Clock *clocktest.Clock

	// Concurrency is the number of simultaneous deliveries in the
	// concurrent case. Default 16.
	Concurrency int
}

// Run checks the contract: every intent performed exactly once whatever the
// delivery pattern, keys that depend only on business identity, payload
// changes refused, a crash between the call and the record recovered as
// the Case expects, and stored results that agree with the first result.
// t is usually a *testing.T. Each case is logged (go test -v). Run returns
// false if any rule was broken.
func Run[In, Out any](t TB, c Case[In, Out]) bool {
	t.Helper()
	if err := c.validate(); err != nil {
		t.Errorf("effecttest: %v", err)
		return false
	}
	r := &runner[In, Out]{t: t, c: c, ok: true, clock: c.Clock, first: map[string]Out{}}
	if r.clock == nil {
		r.clock = clocktest.New()
	}
	r.user = c.NewStore(r.clock.Now)
	if r.user == nil {
		t.Errorf("effecttest: %s: NewStore returned nil", c.Effect.Name)
		return false
	}
	r.store = &crashStore{Store: r.user}
	var cfg idempotency.Config
	if c.Config != nil {
		cfg = *c.Config
	}
	cfg.Now = r.clock.Now
	x, err := idempotency.NewExecutor(r.store, &cfg)
	if err != nil {
		t.Errorf("effecttest: %s: executor: %v", c.Effect.Name, err)
		return false
	}
	r.x = x
	r.lease = c.Effect.Lease
	if r.lease == 0 {
		r.lease = cfg.Lease
	}
	if r.lease == 0 {
		r.lease = 5 * time.Minute // NewExecutor's default
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
	r.payloadChanged(c.Inputs[0])
	r.overlappingSweeps()
	r.storedResultsAgree()
	if r.ok {
		r.logf("passed: %d intents, %d effects at the provider", len(c.Inputs), r.effects())
	}
	return r.ok
}

func (c Case[In, Out]) validate() error {
	switch {
	case c.Effect == nil || c.NewStore == nil || c.Effects == nil:
		return errors.New("Case needs Effect, NewStore and Effects")
	case len(c.Inputs) < 4:
		return fmt.Errorf("Case needs at least 4 distinct inputs, got %d", len(c.Inputs))
	case c.CrashRecovery > ParkForOperator:
		return fmt.Errorf("unknown CrashRecovery %d", c.CrashRecovery)
	case c.Mutate != nil && c.SkipMismatch != "":
		return errors.New("Case sets both Mutate and SkipMismatch: the mismatch case either runs or is skipped")
	}
	if err := c.Effect.Validate(); err != nil {
		return err
	}
	return nil
}

type runner[In, Out any] struct {
	t     TB
	c     Case[In, Out]
	x     *idempotency.Executor
	user  idempotency.Store // the team's store
	store *crashStore       // user's store, with the crash injection
	clock *clocktest.Clock
	lease time.Duration
	base  int // provider effects before the run
	done  int // intents performed so far
	ok    bool
	// parked is set when the crash case left its intent in doubt and no
	// operator settled it.
	parked bool

	mu    sync.Mutex
	first map[string]Out // first result per key
}

func (r *runner[In, Out]) fail(format string, args ...any) {
	r.t.Helper()
	r.ok = false
	r.t.Errorf("effecttest: %s: "+format, append([]any{r.c.Effect.Name}, args...)...)
}

func (r *runner[In, Out]) logf(format string, args ...any) {
	r.t.Helper()
	r.t.Logf("effecttest: %s: "+format, append([]any{r.c.Effect.Name}, args...)...)
}

// effects returns the provider effects performed since Run started.
func (r *runner[In, Out]) effects() int { return r.c.Effects() - r.base }

// expect checks the ground truth after a case; hint, when set, says what
// an excess most likely means in this case.
func (r *runner[In, Out]) expect(caseName, hint string) {
	r.t.Helper()
	got := r.effects()
	r.logf("%s: provider effects %d for %d intents", caseName, got, r.done)
	if got != r.done {
		msg := fmt.Sprintf("%s: the provider performed %d effects for %d intents: each intent must happen exactly once", caseName, got, r.done)
		if hint != "" && got > r.done {
			msg += " (" + hint + ")"
		}
		r.fail("%s", msg)
		r.done = got // report each excess once
	}
}

func (r *runner[In, Out]) run(in In) (idempotency.Result[Out], error) {
	return r.runEffect(r.c.Effect, in)
}

func (r *runner[In, Out]) runEffect(e *idempotency.Effect[In, Out], in In) (idempotency.Result[Out], error) {
	res, err := idempotency.Run(context.Background(), r.x, e, in)
	switch res.Outcome {
	case idempotency.OutcomeApplied, idempotency.OutcomeSkipped, idempotency.OutcomeReconciled:
		r.mu.Lock()
		if _, seen := r.first[res.Key.String()]; !seen {
			r.first[res.Key.String()] = res.Value
		}
		r.mu.Unlock()
	}
	return res, err
}

// tally counts outcomes, for the logs.
type tally map[idempotency.Outcome]int

func (t tally) String() string {
	var parts []string
	for _, o := range idempotency.Outcomes {
		if n := t[o]; n > 0 {
			parts = append(parts, fmt.Sprintf("%v %d", o, n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func (r *runner[In, Out]) keysAreStable() {
	r.t.Helper()
	type identity struct {
		key idempotency.Key
		fp  []byte
		err error
	}
	firsts := make([]identity, len(r.c.Inputs))
	for i, in := range r.c.Inputs {
		k, fp, err := r.c.Effect.Identity(in)
		firsts[i] = identity{k, fp, err}
	}
	// A key derived from the wall clock changes across this gap; the run's
	// fake clock cannot reach time.Now inside the team's Key function.
	time.Sleep(2 * time.Millisecond)
	seen := map[string]int{}
	for i, in := range r.c.Inputs {
		k1, fp1, err := firsts[i].key, firsts[i].fp, firsts[i].err
		if err != nil {
			r.fail("input %d: cannot build its key: %v", i, err)
			continue
		}
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
	if r.ok {
		fp := "no Fingerprint"
		if r.c.Effect.Fingerprint != nil {
			fp = "fingerprints stable too"
		}
		r.logf("keys: %d inputs, %d distinct keys, the same when computed again; %s", len(r.c.Inputs), len(seen), fp)
	}
}

func (r *runner[In, Out]) deliveredTwice(in In) {
	r.t.Helper()
	const name = "two deliveries in a row"
	first, err := r.run(in)
	if err != nil || first.Outcome != idempotency.OutcomeApplied && first.Outcome != idempotency.OutcomeSkipped {
		r.fail("%s: first delivery of a new intent: want applied, got %v (%v)", name, first.Outcome, err)
	}
	r.done++
	second, err := r.run(in)
	if err != nil || second.Outcome != idempotency.OutcomeAlreadyApplied {
		r.fail("%s: second delivery of one intent: want already_applied, got %v (%v)", name, second.Outcome, err)
	}
	if second.Calls != 0 {
		r.fail("%s: made %d provider calls: the repeat must make none", name, first.Calls+second.Calls)
	}
	if first.Outcome == idempotency.OutcomeApplied && second.Outcome == idempotency.OutcomeAlreadyApplied && !reflect.DeepEqual(first.Value, second.Value) {
		r.fail("%s: the repeat returned %v, not the stored first result %v", name, second.Value, first.Value)
	}
	r.logf("%s: %v (%d call), then %v (%d calls)", name, first.Outcome, first.Calls, second.Outcome, second.Calls)
	r.expect(name, "")
}

func (r *runner[In, Out]) deliveredConcurrently(in In) {
	r.t.Helper()
	const name = "concurrent deliveries"
	n := r.c.Concurrency
	if n <= 0 {
		n = 16
	}
	results := make([]idempotency.Result[Out], n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i], errs[i] = r.run(in) })
	}
	wg.Wait()
	r.done++
	seen, calls := tally{}, 0
	for i, res := range results {
		seen[res.Outcome]++
		calls += res.Calls
		switch res.Outcome {
		case idempotency.OutcomeApplied, idempotency.OutcomeSkipped, idempotency.OutcomeAlreadyApplied, idempotency.OutcomeInFlight:
		default:
			r.fail("%s: a delivery ended %v (%v): want applied, already_applied or in_flight", name, res.Outcome, errs[i])
		}
	}
	if calls != 1 {
		r.fail("%s: %d concurrent deliveries of one intent made %d provider calls: the claim must stop all but one before the call", name, n, calls)
	}
	// Anyone who saw it in flight must now see it applied.
	last, err := r.run(in)
	if err != nil || last.Outcome != idempotency.OutcomeAlreadyApplied {
		r.fail("%s: after %d concurrent deliveries the intent is %v (%v), want already_applied", name, n, last.Outcome, err)
	}
	r.logf("%s: %d at once: %v; %d provider call(s); then %v", name, n, seen, calls, last.Outcome)
	r.expect(name, "")
}

// crashBeforeRecord makes the completion of a run fail after the provider
// acted, as a worker killed at that moment would, and checks what later
// deliveries do.
func (r *runner[In, Out]) crashBeforeRecord(in In) {
	r.t.Helper()
	const name = "crash between the provider call and the record"
	r.store.arm()
	res, err := r.run(in)
	lost, crashed := r.store.disarm()
	if !crashed {
		r.fail("%s: the first delivery never reached its completion (%v, %d calls: %v), so the crash could not be injected", name, res.Outcome, res.Calls, err)
		return
	}
	r.done++
	r.logf("%s: the first delivery called the provider %d time(s) and died before its record (%v)", name, res.Calls, res.Outcome)
	if res.Calls != 1 {
		r.fail("%s: the first delivery made %d provider calls, want 1", name, res.Calls)
	}
	// Redelivered while the dead worker's lease is live: nobody calls.
	inside, err := r.run(in)
	r.logf("%s: redelivered inside the lease: %v (%d calls)", name, inside.Outcome, inside.Calls)
	if inside.Outcome != idempotency.OutcomeInFlight || inside.Calls != 0 {
		r.fail("%s: a redelivery inside the dead worker's lease must be in_flight with no call, got %v with %d calls (%v)", name, inside.Outcome, inside.Calls, err)
	}

	r.clock.Advance(r.lease + time.Second)
	res, err = r.run(in)
	const replayHint = "the takeover sent the call again under the same key and the provider performed it again: " +
		"Call must send the key as the provider's idempotency key and the provider must deduplicate by it; " +
		"and Effects must count distinct effects, not requests (a receiver that deduplicates by key is hit again by the replay)"
	switch {
	case res.Outcome == idempotency.OutcomeReconciled:
		r.logf("%s: after the lease: reconciled: Find found the first effect at the provider, recorded with %d calls: recovered automatically", name, res.Calls)
		r.crashRecovered(name)
		r.expect(name, "Find found an effect, yet the provider counts more")
	case res.Outcome == idempotency.OutcomeApplied && res.Reconciled:
		// Find did not see the effect the crashed worker made, so it was
		// sent again under a new provider key.
		r.logf("%s: after the lease: Find found nothing and the effect was sent again (%d calls)", name, res.Calls)
		r.crashRecovered(name)
		r.expect(name, "Find did not find the effect the crashed worker had made, so it was sent again: "+
			"Find must see every object any generation created, and read what was just written")
	case res.Outcome == idempotency.OutcomeApplied || res.Outcome == idempotency.OutcomeSkipped:
		r.logf("%s: after the lease: %v by a takeover under the same key (%d call), the provider replayed: recovered automatically", name, res.Outcome, res.Calls)
		r.crashRecovered(name)
		r.expect(name, replayHint)
	case res.Outcome == idempotency.OutcomeNeedsReconciliation && res.Calls == 0:
		r.logf("%s: after the lease: needs_reconciliation with no call: parked for an operator (%v)", name, err)
		r.crashParked(name, in, lost)
		r.expect(name, "")
	default:
		r.fail("%s: after the lease the delivery must recover the intent (applied by a takeover, reconciled) or leave it in doubt with no call, got %v with %d calls (%v)",
			name, res.Outcome, res.Calls, err)
		r.expect(name, replayHint)
	}
}

func (r *runner[In, Out]) crashRecovered(name string) {
	r.t.Helper()
	if r.c.CrashRecovery == ParkForOperator {
		r.logf("%s: CrashRecovery is ParkForOperator but the effect recovers by itself: the option is not needed", name)
	}
}

// crashParked handles a crash left in doubt: a failure unless the Case
// accepts it, and then an operator's settlement when the store allows it.
func (r *runner[In, Out]) crashParked(name string, in In, lost []byte) {
	r.t.Helper()
	e := r.c.Effect
	if r.c.CrashRecovery != ParkForOperator {
		r.fail("%s: the intent is left in doubt for an operator: with Expired=%v and no Find, every crash between a provider call and its record becomes an operator's task. "+
			"Give the effect a Find (ask the provider by key), or use ExpiredRetry if the provider deduplicates by key for longer than the lease; "+
			"or set CrashRecovery: effecttest.ParkForOperator to accept that", name, e.Expired)
		r.parked = true
		return
	}
	r.parked = true
	op, ok := r.user.(idempotency.Operator)
	if !ok {
		r.logf("%s: accepted (ParkForOperator); the store is not an idempotency.Operator, so the operator's settlement is not checked", name)
		return
	}
	key, _, _ := e.Identity(in)
	ctx := context.Background()
	stuck, err := op.ListStuck(ctx, idempotency.ListStuckRequest{Namespace: key.Namespace()})
	if err != nil {
		r.fail("%s: Operator.ListStuck: %v", name, err)
		return
	}
	i := slices.IndexFunc(stuck, func(rec idempotency.Record) bool { return rec.Key == key.String() })
	if i < 0 {
		r.fail("%s: the record in doubt is not in Operator.ListStuck: an operator would never see it", name)
		return
	}
	// The operator found the effect at the provider: the crashed worker's
	// result (the executor logs it).
	if _, err := op.Settle(ctx, idempotency.SettleRequest{Key: key.String(), Token: stuck[i].Token, State: idempotency.StateApplied,
		Result: lost, Reason: "effecttest: settled with the crashed worker's result"}); err != nil {
		r.fail("%s: Operator.Settle: %v", name, err)
		return
	}
	res, err := r.run(in)
	if err != nil || res.Outcome != idempotency.OutcomeAlreadyApplied || res.Calls != 0 {
		r.fail("%s: after an operator settled the record, a delivery must be already_applied with no call, got %v with %d calls (%v)", name, res.Outcome, res.Calls, err)
		return
	}
	r.parked = false
	r.logf("%s: accepted (ParkForOperator): listed by Operator.ListStuck (%v, %d claims), settled applied by hand, then %v with no call",
		name, stuck[i].State, stuck[i].Claims, res.Outcome)
}

func (r *runner[In, Out]) retryableThenSuccess(in In) {
	r.t.Helper()
	const name = "retryable failure then success"
	var keys []string
	var injected atomic.Bool
	eff := *r.c.Effect
	eff.Call = func(ctx context.Context, k idempotency.Key, in In) (Out, error) {
		keys = append(keys, k.String())
		if injected.CompareAndSwap(false, true) {
			var zero Out
			return zero, idempotency.NotActed(errors.New("effecttest: injected 429, answered before executing"), 0)
		}
		return r.c.Effect.Call(ctx, k, in)
	}
	res, err := r.runEffect(&eff, in)
	switch res.Outcome {
	case idempotency.OutcomeRetryable:
		first, delay := res.Outcome, res.Delay
		// Released: the next delivery, once due, must apply.
		r.clock.Advance(delay)
		res, err = r.run(in)
		if err != nil || res.Outcome != idempotency.OutcomeApplied {
			r.fail("%s: after a retryable failure the next delivery must apply, got %v (%v)", name, res.Outcome, err)
		}
		r.logf("%s: injected a not-acted failure: %v (released, due in %v); the next delivery: %v (%d call)", name, first, delay, res.Outcome, res.Calls)
	case idempotency.OutcomeApplied:
		// The RetryPolicy retried in-run, under the same claim.
		if res.Calls < 2 {
			r.fail("%s: a retryable failure was reported applied after %d provider call(s)", name, res.Calls)
		}
		r.logf("%s: injected a not-acted failure: retried in the same run, %v after %d calls", name, res.Outcome, res.Calls)
	default:
		r.fail("%s: a not-acted provider failure must release the claim or be retried in-run, got %v (%v)", name, res.Outcome, err)
	}
	r.done++
	for _, k := range keys {
		if k != res.Key.String() {
			r.fail("%s: a retry used another key than the failed attempt: the key must not change between attempts", name)
			break
		}
	}
	r.expect(name, "")
}

func (r *runner[In, Out]) payloadChanged(in In) {
	r.t.Helper()
	const name = "same key, different payload"
	switch {
	case r.c.SkipMismatch != "":
		r.logf("%s: skipped: %s", name, r.c.SkipMismatch)
		return
	case r.c.Mutate == nil && r.c.Effect.Fingerprint != nil:
		r.fail("%s: cannot run: the effect has a Fingerprint and the Case has no Mutate. "+
			"Set Mutate to change the payload and keep the key, or SkipMismatch to a reason", name)
		return
	case r.c.Mutate == nil:
		r.logf("%s: skipped: the effect has no Fingerprint, so a changed payload under one key is not detected", name)
		return
	}
	changed := r.c.Mutate(in)
	k1, fp1, err1 := r.c.Effect.Identity(in)
	k2, fp2, err2 := r.c.Effect.Identity(changed)
	if err := errors.Join(err1, err2); err != nil {
		r.fail("%s: %v", name, err)
		return
	}
	if k1 != k2 {
		r.fail("%s: Mutate changed the key: it must change the payload only", name)
		return
	}
	if reflect.DeepEqual(fp1, fp2) {
		if r.c.Effect.Fingerprint == nil {
			r.fail("%s: the effect has no Fingerprint, so the same key with another payload is not refused: set Fingerprint to the payload (amount, coupon...)", name)
		} else {
			r.fail("%s: the same key with a different payload has the same fingerprint: the Fingerprint must cover the payload (amount, coupon...)", name)
		}
		return
	}
	res, err := r.run(changed)
	var me *idempotency.MismatchError
	if !errors.As(err, &me) || res.Outcome != idempotency.OutcomeMismatch || res.Calls != 0 {
		r.fail("%s: must be refused with a *MismatchError and no provider call, got %v with %d calls (%v)", name, res.Outcome, res.Calls, err)
	} else {
		r.logf("%s: %v, *MismatchError (stored record %v), %d calls", name, res.Outcome, me.Stored.State, res.Calls)
	}
	r.expect(name, "")
}

func (r *runner[In, Out]) overlappingSweeps() {
	r.t.Helper()
	const name = "two overlapping sweeps"
	var (
		wg      sync.WaitGroup
		results [2][]idempotency.Result[Out]
	)
	for s := range results {
		wg.Go(func() {
			for _, in := range r.c.Inputs {
				res, _ := r.run(in)
				results[s] = append(results[s], res)
			}
		})
	}
	wg.Wait()
	seen, calls := tally{}, 0
	for _, rs := range results {
		for _, res := range rs {
			seen[res.Outcome]++
			calls += res.Calls
		}
	}
	fresh := len(r.c.Inputs) - 4
	r.done += fresh
	if calls != fresh {
		r.fail("%s: over %d intents (%d new) they made %d provider calls, want %d", name, len(r.c.Inputs), fresh, calls, fresh)
	}
	// Any intent the sweeps saw in flight is finished by a last pass.
	final := tally{}
	for _, in := range r.c.Inputs {
		res, _ := r.run(in)
		final[res.Outcome]++
	}
	r.logf("%s: over %d intents (%d new): %v; %d provider calls; a last pass: %v", name, len(r.c.Inputs), fresh, seen, calls, final)
	r.expect(name, "")
}

func (r *runner[In, Out]) storedResultsAgree() {
	r.t.Helper()
	const name = "stored results"
	keys := make([]string, 0, len(r.c.Inputs))
	for _, in := range r.c.Inputs {
		k, _, err := r.c.Effect.Identity(in)
		if err == nil {
			keys = append(keys, k.String())
		}
	}
	recs, err := r.store.Lookup(context.Background(), keys)
	if err != nil {
		r.fail("%s: lookup: %v", name, err)
		return
	}
	codec := r.c.Effect.Codec
	if codec == nil {
		codec = idempotency.JSONCodec[Out]{}
	}
	finished, compared := 0, 0
	for i, k := range keys {
		rec, ok := recs[k]
		if !ok || !rec.State.Done() {
			if i == 2 && r.parked {
				continue // the crash case left it for an operator
			}
			r.fail("%s: input %d has no applied record at the end (%v)", name, i, rec.State)
			continue
		}
		finished++
		got, err := codec.Decode(rec.Result)
		if err != nil {
			r.fail("%s: input %d: the stored result does not decode: %v", name, i, err)
			continue
		}
		r.mu.Lock()
		want, seen := r.first[k]
		r.mu.Unlock()
		if !seen {
			continue
		}
		compared++
		if !reflect.DeepEqual(got, want) {
			r.fail("%s: input %d: the stored result %v differs from the first applied result %v", name, i, got, want)
		}
	}
	r.logf("%s: %d of %d intents applied or skipped; %d stored results equal to the first result returned", name, finished, len(keys), compared)
}

// errCrash is the injected failure of a completion.
var errCrash = errors.New("effecttest: injected crash between the provider call and the record")

// crashStore fails one completion on request, leaving the claim held until
// its lease ends, as a worker that died after the provider call would.
type crashStore struct {
	idempotency.Store

	mu      sync.Mutex
	armed   bool
	crashed bool
	lost    []byte // the result the failed completion carried
}

func (s *crashStore) arm() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed, s.crashed, s.lost = true, false, nil
}

// disarm ends the injection and reports whether a completion failed, with
// the result it carried.
func (s *crashStore) disarm() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed = false
	return s.lost, s.crashed
}

// Transition implements idempotency.Store.
func (s *crashStore) Transition(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	if c.By == idempotency.ByHolder && c.To.Done() {
		s.mu.Lock()
		crash := s.armed
		if crash {
			s.armed, s.crashed, s.lost = false, true, slices.Clone(c.Result)
		}
		s.mu.Unlock()
		if crash {
			return idempotency.Record{}, errCrash
		}
	}
	return s.Store.Transition(ctx, c)
}
