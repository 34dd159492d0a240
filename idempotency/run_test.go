package idempotency_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
)

type refund struct {
	Order   string
	Request string
	Amount  int64
}

// provider is a fake provider that deduplicates by key, as Stripe does, and
// counts the objects it really created. Its objects carry the business key,
// so find answers as a Stripe list call matched on metadata would.
type provider struct {
	mu      sync.Mutex
	created map[string]string // provider key -> object id
	byBase  map[string]string // business key -> object id
	calls   int
	keys    []string
	fail    []error                   // errors returned by the next calls, in order
	obs     []idempotency.Observation // answers observed by the next calls, in order
	// before, when set, runs at the start of each call, outside the lock.
	before func(n int)
	// lose, when set, makes the next call create its object and then fail
	// with this error (a response lost after the write).
	lose error
}

func newProvider() *provider {
	return &provider{created: map[string]string{}, byBase: map[string]string{}}
}

func (p *provider) call(ctx context.Context, k idempotency.Key, in refund) (string, error) {
	p.mu.Lock()
	p.calls++
	n := p.calls
	before := p.before
	p.mu.Unlock()
	if before != nil {
		before(n)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = append(p.keys, k.String())
	if len(p.obs) > 0 {
		idempotency.Observe(ctx, p.obs[0])
		p.obs = p.obs[1:]
	}
	if len(p.fail) > 0 {
		err := p.fail[0]
		p.fail = p.fail[1:]
		return "", err
	}
	id, ok := p.created[k.String()]
	if !ok {
		id = fmt.Sprintf("re_%d", len(p.created)+1)
		p.created[k.String()] = id
		p.byBase[k.Base().String()] = id
	}
	if p.lose != nil {
		err := p.lose
		p.lose = nil
		return "", err
	}
	return id, nil
}

func (p *provider) find(_ context.Context, k idempotency.Key, _ refund) (string, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.byBase[k.String()]
	return id, ok, nil
}

func (p *provider) stats() (calls, created int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, len(p.created)
}

var refundKeys = idempotency.KeySpace{Namespace: "orders.refund"}

func refundEffect(p *provider) *idempotency.Effect[refund, string] {
	return &idempotency.Effect[refund, string]{
		Name: "orders.refund",
		Key: func(in refund) (idempotency.Key, error) {
			return refundKeys.Key(idempotency.Str("order", in.Order), idempotency.Str("request", in.Request))
		},
		Fingerprint: func(in refund) ([]byte, error) { return idempotency.FingerprintJSON(in.Amount) },
		Call:        p.call,
	}
}

type env struct {
	store *idempotency.MemStore
	clock *clocktest.Clock
	x     *idempotency.Executor
	p     *provider
	eff   *idempotency.Effect[refund, string]
	ctx   context.Context
}

func setup(t *testing.T, cfg *idempotency.Config) *env {
	t.Helper()
	clock := clocktest.New()
	store := idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: clock.Now})
	var c idempotency.Config
	if cfg != nil {
		c = *cfg
	}
	c.Now = clock.Now
	x, err := idempotency.NewExecutor(store, &c)
	require.NoError(t, err)
	p := newProvider()
	return &env{store: store, clock: clock, x: x, p: p, eff: refundEffect(p), ctx: context.Background()}
}

func (e *env) with(mod func(*idempotency.Effect[refund, string])) *idempotency.Effect[refund, string] {
	eff := *e.eff
	mod(&eff)
	return &eff
}

func (e *env) key(t *testing.T, in refund) string {
	t.Helper()
	k, err := e.eff.Key(in)
	require.NoError(t, err)
	return k.String()
}

func (e *env) record(t *testing.T, in refund) (idempotency.Record, bool) {
	t.Helper()
	m, err := e.store.Lookup(e.ctx, []string{e.key(t, in)})
	require.NoError(t, err)
	r, ok := m[e.key(t, in)]
	return r, ok
}

var r1 = refund{Order: "ord_1", Request: "rr_1", Amount: 500}

func TestRunAppliesOnceAndReplaysStoredResult(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	res, err := idempotency.Run(e.ctx, e.x, e.eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, "re_1", res.Value)
	require.Equal(t, 1, res.Calls)
	require.Equal(t, idempotency.StateApplied, res.Record.State)
	require.Len(t, res.Record.Evidence, 1)
	require.Equal(t, idempotency.AttemptDone, res.Record.Evidence[0].Class)

	again, err := idempotency.Run(e.ctx, e.x, e.eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, again.Outcome)
	require.Equal(t, "re_1", again.Value)
	require.Zero(t, again.Calls)
	calls, created := e.p.stats()
	require.Equal(t, 1, calls, "a repeat must not call the provider")
	require.Equal(t, 1, created)
}

func TestRunManyConcurrentDeliveriesMakeOneCall(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	var calls atomic.Int32
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Call = func(ctx context.Context, k idempotency.Key, in refund) (string, error) {
			calls.Add(1)
			return e.p.call(ctx, k, in)
		}
	})
	outcomes := make(chan idempotency.Outcome, 64)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := idempotency.Run(e.ctx, e.x, eff, r1)
			if err == nil {
				outcomes <- res.Outcome
			}
		}()
	}
	wg.Wait()
	close(outcomes)
	counts := map[idempotency.Outcome]int{}
	for o := range outcomes {
		counts[o]++
	}
	require.Equal(t, int32(1), calls.Load(), "64 deliveries of one intent made %d provider calls", calls.Load())
	require.Equal(t, 1, counts[idempotency.OutcomeApplied])
	require.Equal(t, 63, counts[idempotency.OutcomeInFlight]+counts[idempotency.OutcomeAlreadyApplied])
}

func TestRunMismatchIsCheckedOnEveryPath(t *testing.T) {
	t.Parallel()
	other := r1
	other.Amount = 900

	t.Run("AppliedRecord", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		_, err := idempotency.Run(e.ctx, e.x, e.eff, r1)
		require.NoError(t, err)
		res, err := idempotency.Run(e.ctx, e.x, e.eff, other)
		var me *idempotency.MismatchError
		require.ErrorAs(t, err, &me)
		require.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)
		require.Equal(t, idempotency.OutcomeMismatch, res.Outcome)
		require.Equal(t, idempotency.StateApplied, me.Stored.State)
		require.Equal(t, `"re_1"`, string(me.Stored.Result), "the mismatch error carries the stored result")
		calls, _ := e.p.stats()
		require.Equal(t, 1, calls, "a mismatch must not call the provider")
	})
	t.Run("ExpiredClaimNotTakenOver", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Expired = idempotency.ExpiredRetry })
		e.p.before = func(int) { e.clock.Advance(time.Hour) } // the worker stalls past its lease...
		e.p.fail = []error{errors.New("...and dies")}
		_, _ = idempotency.Run(e.ctx, e.x, eff, r1)
		e.p.before = nil
		res, err := idempotency.Run(e.ctx, e.x, eff, other)
		require.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)
		require.Equal(t, idempotency.OutcomeMismatch, res.Outcome)
		calls, _ := e.p.stats()
		require.Equal(t, 1, calls, "a record must not be taken over with another payload")
		res, err = idempotency.Run(e.ctx, e.x, eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome, "the right payload retries under the same key")
	})
}

// TestRunFailureClassesDecideTheRecord: what each class of provider error
// leaves in the ledger, by policy, and what the next delivery does.
func TestRunFailureClassesDecideTheRecord(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		policy   idempotency.ExpiredPolicy
		err      error
		outcome  idempotency.Outcome
		sentinel error
		state    idempotency.State // "" means no active record
		next     idempotency.Outcome
	}{
		{"NotActed", idempotency.ExpiredPark, idempotency.NotActed(errors.New("429"), 0), idempotency.OutcomeRetryable, idempotency.ErrRetryable, idempotency.StateReleased, idempotency.OutcomeApplied},
		{"UnknownWhereTheProviderDeduplicates", idempotency.ExpiredRetry, idempotency.Unknown(errors.New("503"), 0), idempotency.OutcomeRetryable, idempotency.ErrRetryable, idempotency.StateUnknown, idempotency.OutcomeApplied},
		{"UnclassifiedWhereTheProviderDeduplicates", idempotency.ExpiredRetry, errors.New("connection reset"), idempotency.OutcomeRetryable, idempotency.ErrRetryable, idempotency.StateUnknown, idempotency.OutcomeApplied},
		{"UnknownWhereItDoesNot", idempotency.ExpiredPark, idempotency.Unknown(errors.New("503"), 0), idempotency.OutcomeNeedsReconciliation, idempotency.ErrNeedsReconciliation, idempotency.StateInDoubt, idempotency.OutcomeNeedsReconciliation},
		{"UnclassifiedUnderUncalled", idempotency.ExpiredRetryUncalled, errors.New("context canceled after the write"), idempotency.OutcomeNeedsReconciliation, idempotency.ErrNeedsReconciliation, idempotency.StateInDoubt, idempotency.OutcomeNeedsReconciliation},
		{"NotActedUnderUncalled", idempotency.ExpiredRetryUncalled, idempotency.NotActed(errors.New("connection refused"), 0), idempotency.OutcomeRetryable, idempotency.ErrRetryable, idempotency.StateReleased, idempotency.OutcomeApplied},
		{"Permanent", idempotency.ExpiredRetry, idempotency.Permanent(errors.New("card_declined")), idempotency.OutcomePermanent, idempotency.ErrPermanent, "", idempotency.OutcomeApplied},
		{"ProviderMismatch", idempotency.ExpiredRetry, idempotency.Mismatch(errors.New("idempotency_error")), idempotency.OutcomeMismatch, idempotency.ErrFingerprintMismatch, "", idempotency.OutcomeApplied},
		{"Reconcile", idempotency.ExpiredRetry, idempotency.Reconcile(errors.New("replayed 500")), idempotency.OutcomeNeedsReconciliation, idempotency.ErrNeedsReconciliation, idempotency.StateInDoubt, idempotency.OutcomeNeedsReconciliation},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, nil)
			eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Expired = tc.policy })
			e.p.fail = []error{tc.err}
			res, err := idempotency.Run(e.ctx, e.x, eff, r1)
			require.ErrorIs(t, err, tc.sentinel)
			require.Equal(t, tc.outcome, res.Outcome)
			rec, ok := e.record(t, r1)
			if tc.state == "" {
				require.False(t, ok, "the key must be free after %s", tc.name)
				h, err := e.store.History(e.ctx, res.Key.String())
				require.NoError(t, err)
				require.Len(t, h, 1)
				require.Equal(t, idempotency.StateFailed, h[0].State)
			} else {
				require.True(t, ok)
				require.Equal(t, tc.state, rec.State)
				require.False(t, rec.State.Held(), "a failed run does not keep holding its claim")
				require.Len(t, rec.Evidence, 1)
			}
			next, _ := idempotency.Run(e.ctx, e.x, eff, r1)
			require.Equal(t, tc.next, next.Outcome)
			calls, created := e.p.stats()
			if tc.next == idempotency.OutcomeApplied {
				require.Equal(t, 2, calls)
				require.Equal(t, []string{res.Key.String(), res.Key.String()}, e.p.keys, "the retry reuses the key")
			} else {
				require.Equal(t, 1, calls, "a record in doubt is never called again")
			}
			require.LessOrEqual(t, created, 1)
		})
	}
}

func TestRunRetriesInRunWithSameKey(t *testing.T) {
	t.Parallel()
	var slept []time.Duration
	e := setup(t, &idempotency.Config{
		Retry: idempotency.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Second, MaxBackoff: time.Minute},
		Sleep: func(ctx context.Context, d time.Duration) error { slept = append(slept, d); return nil },
	})
	eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Expired = idempotency.ExpiredRetry })
	e.p.fail = []error{idempotency.NotActed(errors.New("409 in flight"), 0), idempotency.Unknown(errors.New("503"), 5*time.Second)}
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, 3, res.Calls)
	require.Equal(t, []time.Duration{time.Second, 5 * time.Second}, slept, "backoff, then the provider's longer Retry-After")
	require.Len(t, e.p.keys, 3)
	require.Equal(t, e.p.keys[0], e.p.keys[1])
	require.Equal(t, e.p.keys[0], e.p.keys[2])
	require.Equal(t, 1, res.Record.Claims, "in-run retries keep the same claim")
	classes := []idempotency.AttemptClass{}
	for _, a := range res.Record.Evidence {
		classes = append(classes, a.Class)
	}
	require.Equal(t, []idempotency.AttemptClass{idempotency.AttemptNotActed, idempotency.AttemptUnknown, idempotency.AttemptDone}, classes)
}

func TestRunNeverRetriesAnUnknownOutcomeInRunWhereTheProviderIgnoresKeys(t *testing.T) {
	t.Parallel()
	for _, policy := range []idempotency.ExpiredPolicy{idempotency.ExpiredPark, idempotency.ExpiredRetryUncalled} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			e := setup(t, &idempotency.Config{Retry: idempotency.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}})
			eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Expired = policy })
			// The request was written, then the caller's context was
			// cancelled: the Call returns ctx.Err(), unclassified.
			e.p.fail = []error{context.Canceled}
			res, err := idempotency.Run(e.ctx, e.x, eff, r1)
			require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
			require.Equal(t, 1, res.Calls, "an attempt that may have acted is never retried in-run")
			res, _ = idempotency.Run(e.ctx, e.x, eff, r1)
			require.Zero(t, res.Calls, "nor by the next run")
			rec, _ := e.record(t, r1)
			require.Equal(t, idempotency.StateInDoubt, rec.State)
		})
	}
}

func TestRunSkipIsADecisionNotRetried(t *testing.T) {
	t.Parallel()
	e := setup(t, &idempotency.Config{Retry: idempotency.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}})
	var calls int
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Call = func(context.Context, idempotency.Key, refund) (string, error) {
			calls++
			return "nothing to refund", idempotency.Skip("order already refunded offline")
		}
	})
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeSkipped, res.Outcome)
	require.Equal(t, 1, res.Calls, "a skip is a decision: one call")
	require.Equal(t, idempotency.StateSkipped, res.Record.State)
	res, err = idempotency.Run(e.ctx, e.x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Equal(t, "nothing to refund", res.Value)
	require.Equal(t, 1, calls)
}

// TestRunNoCallStartsPastTheProviderWindow: the window is checked before
// every attempt, not only at the claim.
func TestRunNoCallStartsPastTheProviderWindow(t *testing.T) {
	t.Parallel()
	e := setup(t, &idempotency.Config{Retry: idempotency.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}})
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Expired, eff.DedupWindow, eff.Lease = idempotency.ExpiredRetry, time.Hour, 10*time.Minute
	})
	// The first attempt hangs until the provider's window has passed.
	e.p.before = func(n int) {
		if n == 1 {
			e.clock.Advance(time.Hour)
		}
	}
	e.p.fail = []error{idempotency.Unknown(errors.New("timeout"), 0)}
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Equal(t, 1, res.Calls, "the in-run retry would start past the provider's window")
	res, err = idempotency.Run(e.ctx, e.x, eff, r1)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation, "past the window the record is in doubt")
	require.Zero(t, res.Calls)
}

func TestRunTakeoverNeedsTheWholeRunInsideTheWindow(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Expired, eff.DedupWindow, eff.Lease = idempotency.ExpiredRetry, time.Hour, 10*time.Minute
	})
	e.p.before = func(int) { e.clock.Advance(55 * time.Minute) } // dies late in its window
	e.p.fail = []error{errors.New("worker died")}
	_, _ = idempotency.Run(e.ctx, e.x, eff, r1)
	e.p.before = nil
	// 55 minutes in: a takeover's run (10 minutes) would end past the hour.
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Zero(t, res.Calls)
}

// TestRunLostCompletionIsRecovered: a call runs past its lease, an operator
// settles the record failed (nothing at the provider yet), then the call
// succeeds. The success must be recorded, not reported as in flight.
func TestRunLostCompletionIsRecovered(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	inCall, proceed := make(chan struct{}), make(chan struct{})
	e.p.before = func(n int) {
		if n == 1 {
			close(inCall)
			<-proceed
		}
	}
	done := make(chan idempotency.Result[string])
	go func() {
		res, _ := idempotency.Run(e.ctx, e.x, e.eff, r1)
		done <- res
	}()
	<-inCall
	rec, _ := e.record(t, r1)
	_, err := e.store.Settle(e.ctx, idempotency.SettleRequest{Key: rec.Key, Token: rec.Token, State: idempotency.StateFailed, Reason: "nothing at the provider"})
	require.ErrorIs(t, err, idempotency.ErrClaimLive, "a live claim is not settled without Force")
	e.clock.Advance(10 * time.Minute)
	stuck, err := e.store.ListStuck(e.ctx, idempotency.ListStuckRequest{})
	require.NoError(t, err)
	require.Len(t, stuck, 1)
	_, err = e.store.Settle(e.ctx, idempotency.SettleRequest{Key: rec.Key, Token: stuck[0].Token, State: idempotency.StateFailed, Reason: "nothing at the provider"})
	require.NoError(t, err)
	close(proceed)
	late := <-done
	require.NoError(t, late.Err)
	require.Equal(t, idempotency.OutcomeApplied, late.Outcome, "the success is recorded over the settled failure")
	got, ok := e.record(t, r1)
	require.True(t, ok)
	require.Equal(t, idempotency.StateApplied, got.State)
	require.Equal(t, `"re_1"`, string(got.Result))

	next, err := idempotency.Run(e.ctx, e.x, e.eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, next.Outcome)
	calls, created := e.p.stats()
	require.Equal(t, 1, calls)
	require.Equal(t, 1, created)
}

func TestRunLateWorkerMeetingALiveHolderIsInFlight(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Expired = idempotency.ExpiredRetry })
	inCall, proceed := make(chan struct{}), make(chan struct{})
	inSecond, proceedSecond := make(chan struct{}), make(chan struct{})
	e.p.before = func(n int) {
		switch n {
		case 1:
			close(inCall)
			<-proceed
		case 2:
			close(inSecond)
			<-proceedSecond
		}
	}
	first := make(chan idempotency.Result[string])
	go func() { res, _ := idempotency.Run(e.ctx, e.x, eff, r1); first <- res }()
	<-inCall
	e.clock.Advance(10 * time.Minute)
	second := make(chan idempotency.Result[string])
	go func() { res, _ := idempotency.Run(e.ctx, e.x, eff, r1); second <- res }()
	<-inSecond // the takeover holds a live claim and is calling
	close(proceed)
	late := <-first
	require.NoError(t, late.Err, "Run's doc: the error is nil for in flight")
	require.Equal(t, idempotency.OutcomeInFlight, late.Outcome)
	require.Equal(t, idempotency.Retry, late.Disposition().Action)
	close(proceedSecond)
	holder := <-second
	require.Equal(t, idempotency.OutcomeApplied, holder.Outcome)
	_, created := e.p.stats()
	require.Equal(t, 1, created, "the provider deduplicated under the shared key")
}

func TestRunLostSuccessThatCannotBeRecordedKeepsTheResult(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	e := setup(t, &idempotency.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	inCall, proceed := make(chan struct{}), make(chan struct{})
	e.p.before = func(n int) {
		if n == 1 {
			close(inCall)
			<-proceed
		}
	}
	done := make(chan idempotency.Result[string])
	go func() { res, _ := idempotency.Run(e.ctx, e.x, e.eff, r1); done <- res }()
	<-inCall
	e.clock.Advance(10 * time.Minute)
	rec, _ := e.record(t, r1)
	// The operator settled it failed, and a delivery with another payload
	// has since claimed the key (and been refused before acting).
	_, err := e.store.Settle(e.ctx, idempotency.SettleRequest{Key: rec.Key, Token: rec.Token, State: idempotency.StateFailed})
	require.NoError(t, err)
	other := r1
	other.Amount = 999
	e.p.fail = []error{idempotency.NotActed(errors.New("429"), 0)}
	res, _ := idempotency.Run(e.ctx, e.x, e.eff, other)
	require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
	close(proceed)
	late := <-done
	require.Equal(t, idempotency.OutcomeNeedsReconciliation, late.Outcome)
	var lost *idempotency.LostResultError
	require.ErrorAs(t, late.Err, &lost)
	require.ErrorIs(t, late.Err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, `"re_1"`, string(lost.Result), "the provider's answer is kept in the error")
	require.Equal(t, `"re_1"`, string(late.LostResult), "and in the result")
	require.Contains(t, logs.String(), `result="\"re_1\""`, "and in the log")
	require.Contains(t, logs.String(), "level=ERROR")
}

func TestRunLateSuccessMeetingAFinishedRecordIsAlreadyApplied(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	inCall, proceed := make(chan struct{}), make(chan struct{})
	e.p.before = func(n int) {
		if n == 1 {
			close(inCall)
			<-proceed
		}
	}
	done := make(chan idempotency.Result[string])
	go func() { res, _ := idempotency.Run(e.ctx, e.x, e.eff, r1); done <- res }()
	<-inCall
	e.clock.Advance(10 * time.Minute)
	rec, _ := e.record(t, r1)
	// The operator found the object at the provider and settled with it.
	_, err := e.store.Settle(e.ctx, idempotency.SettleRequest{Key: rec.Key, Token: rec.Token, State: idempotency.StateApplied, Result: []byte(`"re_1"`)})
	require.NoError(t, err)
	close(proceed)
	late := <-done
	require.NoError(t, late.Err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, late.Outcome, "the ledger already says the effect happened")
	require.Equal(t, "re_1", late.Value)
	require.Nil(t, late.LostResult)
}

// spyStore records whether each store call could be cancelled.
type spyStore struct {
	*idempotency.MemStore
	mu          sync.Mutex
	cancellable []string
}

func (s *spyStore) note(ctx context.Context, op string) {
	if ctx.Done() != nil {
		s.mu.Lock()
		s.cancellable = append(s.cancellable, op)
		s.mu.Unlock()
	}
}

func (s *spyStore) Claim(ctx context.Context, r idempotency.ClaimRequest) (idempotency.Claim, error) {
	s.note(ctx, "claim")
	return s.MemStore.Claim(ctx, r)
}

func (s *spyStore) Transition(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	s.note(ctx, "change to "+string(c.To))
	return s.MemStore.Transition(ctx, c)
}

func TestRunStoreCallsAreNotCutByTheCallersCancellation(t *testing.T) {
	t.Parallel()
	clock := clocktest.New()
	spy := &spyStore{MemStore: idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: clock.Now})}
	x, err := idempotency.NewExecutor(spy, &idempotency.Config{Now: clock.Now})
	require.NoError(t, err)
	p := newProvider()
	eff := refundEffect(p)
	eff.Expired = idempotency.ExpiredRetryUncalled
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := idempotency.Run(ctx, x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Empty(t, spy.cancellable, "claim, mark-calling and complete must run on a context the caller cannot cancel")
}

func TestRunCancelledAfterTheClaimLeavesTheKeyFreeAtOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Expired = idempotency.ExpiredRetryUncalled
	})
	// Cancelled after the claim, before the attempt: a middleware sees it.
	x := e.x.WithMiddleware(func(ctx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
		cancel()
		return next(ctx)
	})
	res, err := idempotency.Run(ctx, x, eff, r1)
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, res.Calls)
	rec, _ := e.record(t, r1)
	require.Equal(t, idempotency.StateReleased, rec.State, "nothing was called: the key is free at once, not after the lease")
	res, err = idempotency.Run(e.ctx, e.x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
}

func TestRunMiddlewareWaitsBeforeTheCallIsMarked(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Expired = idempotency.ExpiredRetryUncalled })
	var stateDuringWait idempotency.State
	x := e.x.WithMiddleware(func(ctx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
		rec, _ := e.record(t, r1)
		stateDuringWait = rec.State
		return errors.New("rate limiter: no token before the deadline")
	})
	res, err := idempotency.Run(e.ctx, x, eff, r1)
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Equal(t, idempotency.StateClaimed, stateDuringWait, "a wait in a middleware happens before the call is marked")
	require.Zero(t, res.Calls)
	rec, _ := e.record(t, r1)
	require.Equal(t, idempotency.StateReleased, rec.State)
	require.Equal(t, idempotency.AttemptNotActed, rec.Evidence[0].Class)

	var order []string
	x = e.x.WithMiddleware(
		func(ctx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
			order = append(order, fmt.Sprintf("outer %d %s", a.Number, a.Effect))
			return next(ctx)
		},
		func(ctx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
			order = append(order, "inner")
			err := next(ctx)
			_ = next(ctx) // a second call is refused
			return err
		})
	res, err = idempotency.Run(e.ctx, x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, 1, res.Calls)
	require.Equal(t, []string{"outer 1 orders.refund", "inner"}, order)
}

type nilCodec struct{}

func (nilCodec) Encode(string) ([]byte, error) { return nil, nil }
func (nilCodec) Decode(b []byte) (string, error) {
	return fmt.Sprintf("decoded %d bytes", len(b)), nil
}

func TestRunEmptyEncodedResultIsRecordedAndNeverCalledAgain(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Codec, eff.Expired = nilCodec{}, idempotency.ExpiredRetry
	})
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, idempotency.StateApplied, res.Record.State)
	e.clock.Advance(time.Hour)
	res, err = idempotency.Run(e.ctx, e.x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Equal(t, "decoded 0 bytes", res.Value)
	calls, _ := e.p.stats()
	require.Equal(t, 1, calls)
}

type badCodec struct{}

func (badCodec) Encode(string) ([]byte, error) { return nil, errors.New("cannot encode") }
func (badCodec) Decode([]byte) (string, error) { return "", nil }

func TestRunUnencodableResultIsInDoubtAndWritesNoAppliedRecord(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Codec = badCodec{} })
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.ErrorIs(t, err, idempotency.ErrEncodeResult)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
	rec, _ := e.record(t, r1)
	require.Equal(t, idempotency.StateInDoubt, rec.State)
	require.Nil(t, rec.Result)
}

func TestRunHooks(t *testing.T) {
	t.Parallel()
	t.Run("OnCompleteFailureMarksNothing", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		var rows []string
		fail := true
		eff := e.with(func(eff *idempotency.Effect[refund, string]) {
			eff.Expired = idempotency.ExpiredRetry
			eff.OnComplete = func(ctx context.Context, in refund, out string) error {
				if fail {
					return errors.New("domain table unavailable")
				}
				rows = append(rows, in.Request+"->"+out)
				return nil
			}
		})
		res, err := idempotency.Run(e.ctx, e.x, eff, r1)
		require.Error(t, err)
		require.Equal(t, idempotency.OutcomeError, res.Outcome)
		require.Equal(t, `"re_1"`, string(res.LostResult), "the success the ledger could not record is kept")
		require.Empty(t, rows)
		e.clock.Advance(10 * time.Minute)
		fail = false
		res, err = idempotency.Run(e.ctx, e.x, eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, []string{"rr_1->re_1"}, rows)
		_, created := e.p.stats()
		require.Equal(t, 1, created)
	})
	t.Run("AHookMayUseTheStore", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		var seen idempotency.State
		eff := e.with(func(eff *idempotency.Effect[refund, string]) {
			eff.OnComplete = func(ctx context.Context, in refund, out string) error {
				m, err := e.x.Store().Lookup(ctx, []string{e.key(t, in)})
				seen = m[e.key(t, in)].State
				return err
			}
		})
		res, err := idempotency.Run(e.ctx, e.x, eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, idempotency.StateCalling, seen, "the hook ran before the change, without deadlocking the store")
	})
	t.Run("OnFailRecordsTheRefusalWithTheFailure", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		var rows []string
		hookErr := errors.New("domain table unavailable")
		fail := true
		eff := e.with(func(eff *idempotency.Effect[refund, string]) {
			eff.Expired = idempotency.ExpiredRetry
			eff.OnFail = func(ctx context.Context, in refund, cause error) error {
				if fail {
					return hookErr
				}
				rows = append(rows, in.Request+": "+cause.Error())
				return nil
			}
		})
		e.p.fail = []error{idempotency.Permanent(errors.New("charge_already_refunded")), idempotency.Permanent(errors.New("charge_already_refunded"))}
		// The second answer is the provider's replay of the first, saved
		// refusal: it proves the first attempt created nothing.
		e.p.obs = []idempotency.Observation{{Status: 400}, {Status: 400, Replayed: true}}
		res, err := idempotency.Run(e.ctx, e.x, eff, r1)
		require.ErrorIs(t, err, hookErr)
		require.Equal(t, idempotency.OutcomeError, res.Outcome)
		rec, _ := e.record(t, r1)
		require.Equal(t, idempotency.StateCalling, rec.State, "a failed hook marks nothing")
		require.Empty(t, rows)
		fail = false
		e.clock.Advance(time.Hour)
		res, err = idempotency.Run(e.ctx, e.x, eff, r1)
		require.ErrorIs(t, err, idempotency.ErrPermanent)
		require.Equal(t, idempotency.OutcomePermanent, res.Outcome)
		require.Equal(t, idempotency.StateFailed, res.Record.State)
		require.Equal(t, []string{"rr_1: charge_already_refunded"}, rows)
	})
}

func TestRunInvalidInputHasANamedOutcome(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	noCall := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Call = nil })
	noKey := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Key = nil })
	badKey := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Key = func(in refund) (idempotency.Key, error) { return refundKeys.Key(idempotency.Str("order", "")) }
	})
	badFP := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Fingerprint = func(refund) ([]byte, error) { return nil, errors.New("no amount") }
	})
	longLease := e.with(func(eff *idempotency.Effect[refund, string]) { eff.DedupWindow = time.Minute })
	for name, tc := range map[string]struct {
		eff  *idempotency.Effect[refund, string]
		want error
	}{
		"nil": {nil, idempotency.ErrInvalidEffect}, "noCall": {noCall, idempotency.ErrInvalidEffect}, "noKey": {noKey, idempotency.ErrInvalidEffect},
		"badKey": {badKey, idempotency.ErrEmptyPart}, "badFingerprint": {badFP, idempotency.ErrInvalidEffect},
		"leaseLongerThanWindow": {longLease, idempotency.ErrInvalidEffect},
	} {
		res, err := idempotency.Run(e.ctx, e.x, tc.eff, r1)
		require.ErrorIs(t, err, tc.want, name)
		require.Equal(t, idempotency.OutcomeInvalid, res.Outcome, name)
		require.Equal(t, "invalid", res.Outcome.String())
		require.Equal(t, idempotency.DeadLetter, res.Disposition().Action)
	}
	stuck, _ := e.store.ListStuck(e.ctx, idempotency.ListStuckRequest{})
	require.Empty(t, stuck)
	calls, _ := e.p.stats()
	require.Zero(t, calls)
	_, err := idempotency.NewExecutor(nil, nil)
	require.ErrorIs(t, err, idempotency.ErrNilStore)
}

func TestRunLogsNamespaceOnlyInHMACMode(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	var events []idempotency.Event
	var mu sync.Mutex
	e := setup(t, &idempotency.Config{
		Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnOutcome: func(_ context.Context, ev idempotency.Event) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		},
	})
	secret := idempotency.KeySpace{Namespace: "orders.refund", Secret: []byte("k")}
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Expired = idempotency.ExpiredRetry
		eff.Key = func(in refund) (idempotency.Key, error) {
			return secret.Key(idempotency.Str("order", in.Order), idempotency.Str("request", in.Request))
		}
	})
	k, _ := eff.Key(r1)
	e.p.fail = []error{fmt.Errorf("boom for %s", k)}
	_, _ = idempotency.Run(e.ctx, e.x, eff, r1)
	_, _ = idempotency.Run(e.ctx, e.x, eff, r1)
	_, _ = idempotency.Run(e.ctx, e.x, eff, r1)
	require.NotContains(t, buf.String(), k.String())
	require.NotContains(t, buf.String(), "ord_1")
	require.Contains(t, buf.String(), "orders.refund:<hmac>")
	rec, _ := e.store.Lookup(e.ctx, []string{k.String()})
	require.NotContains(t, rec[k.String()].Evidence[0].Error, k.String(), "evidence never holds an HMAC key")
	require.Len(t, events, 3)
	require.Equal(t, []idempotency.Outcome{idempotency.OutcomeRetryable, idempotency.OutcomeApplied, idempotency.OutcomeAlreadyApplied},
		[]idempotency.Outcome{events[0].Outcome, events[1].Outcome, events[2].Outcome})
}

func TestRunExpiredRetryUncalledNeverCallsTwice(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Expired = idempotency.ExpiredRetryUncalled })

	// A worker that died after claiming, before calling: taken over.
	_, err := e.store.Claim(e.ctx, idempotency.ClaimRequest{Key: e.key(t, r1), Namespace: "orders.refund",
		Fingerprint: fingerprint(500), Lease: time.Minute, Track: true})
	require.NoError(t, err)
	e.clock.Advance(2 * time.Minute)
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)

	// A worker that died after its call started: in doubt, never called again.
	r2 := refund{Order: "ord_1", Request: "rr_2", Amount: 100}
	crashing := *eff
	crashing.OnComplete = func(context.Context, refund, string) error { return errors.New("crash") }
	res, _ = idempotency.Run(e.ctx, e.x, &crashing, r2)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	e.clock.Advance(10 * time.Minute)
	res, err = idempotency.Run(e.ctx, e.x, eff, r2)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Zero(t, res.Calls)
	calls, _ := e.p.stats()
	require.Equal(t, 2, calls, "one call per intent, none from a takeover after a started call")
}

// fingerprint returns the fingerprint the executor stores for amount.
func fingerprint(amount int64) []byte {
	_, fp, err := refundEffect(newProvider()).Identity(refund{Order: "o", Request: "r", Amount: amount})
	if err != nil {
		panic(err)
	}
	return fp
}

func TestRunKeepsTheKeyComputedBeforeTheCall(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := &idempotency.Effect[*refund, string]{
		Name: "orders.refund",
		Key: func(in *refund) (idempotency.Key, error) {
			return refundKeys.Key(idempotency.Str("order", in.Order), idempotency.Str("request", in.Request))
		},
		Call: func(ctx context.Context, k idempotency.Key, in *refund) (string, error) {
			in.Request = "mutated-by-the-handler" // a handler that changes its input
			return "re_1", nil
		},
	}
	in := &refund{Order: "ord_1", Request: "rr_1", Amount: 500}
	res, err := idempotency.Run(e.ctx, e.x, eff, in)
	require.NoError(t, err)
	require.Equal(t, "orders.refund:v1:order=ord_1/request=rr_1", res.Record.Key, "completion used the key computed before the call")
	again, err := idempotency.Run(e.ctx, e.x, eff, &refund{Order: "ord_1", Request: "rr_1", Amount: 500})
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, again.Outcome)
}

func TestRunDispositions(t *testing.T) {
	t.Parallel()
	for _, o := range idempotency.Outcomes {
		d := idempotency.DispositionOf(o, time.Second)
		switch o {
		case idempotency.OutcomeApplied, idempotency.OutcomeAlreadyApplied, idempotency.OutcomeSkipped, idempotency.OutcomeReconciled:
			require.Equal(t, idempotency.Ack, d.Action, o.String())
		case idempotency.OutcomeInFlight, idempotency.OutcomeNotDue, idempotency.OutcomeRetryable, idempotency.OutcomeError:
			require.Equal(t, idempotency.Disposition{Action: idempotency.Retry, Delay: time.Second}, d, o.String())
		default:
			require.Equal(t, idempotency.DeadLetter, d.Action, o.String())
		}
		require.NotContains(t, o.String(), "Outcome(", "every outcome has a name")
	}
}

func TestRunRefusalAfterAnUnknownAttemptIsNotTrusted(t *testing.T) {
	t.Parallel()
	e := setup(t, &idempotency.Config{Retry: idempotency.RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond}})
	eff := e.with(func(eff *idempotency.Effect[refund, string]) { eff.Expired = idempotency.ExpiredRetry })
	// The first attempt may have acted; a refusal of the second does not
	// prove the first created nothing (it is not the provider's replay).
	e.p.fail = []error{idempotency.Unknown(errors.New("timeout"), 0), idempotency.Permanent(errors.New("400"))}
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	rec, ok := e.record(t, r1)
	require.True(t, ok, "the key is not freed by a refusal that proves nothing")
	require.Equal(t, idempotency.StateUnknown, rec.State)
	require.Equal(t, 2, res.Calls)
}

// reconciling returns an effect that can ask the provider (Find).
func (e *env) reconciling(policy idempotency.ExpiredPolicy) *idempotency.Effect[refund, string] {
	return e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Expired, eff.DedupWindow, eff.Find = policy, 24*time.Hour, e.p.find
	})
}

func TestRunReconcilesARecordInDoubt(t *testing.T) {
	t.Parallel()
	t.Run("FoundIsRecordedWithoutACall", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		eff := e.reconciling(idempotency.ExpiredRetryUncalled)
		// The provider made the refund and the response was lost.
		e.p.lose = idempotency.Unknown(errors.New("connection reset after the write"), 0)
		res, err := idempotency.Run(e.ctx, e.x, eff, r1)
		require.ErrorIs(t, err, idempotency.ErrRetryable, "with Find, a record in doubt is for a later run, not a person")
		require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
		rec, _ := e.record(t, r1)
		require.Equal(t, idempotency.StateInDoubt, rec.State)

		// Not before the attempt's lease ends: it may still be running.
		res, err = idempotency.Run(e.ctx, e.x, eff, r1)
		require.ErrorIs(t, err, idempotency.ErrNotDue)
		require.Equal(t, idempotency.OutcomeNotDue, res.Outcome)
		require.Equal(t, 5*time.Minute, res.Delay)

		e.clock.Advance(5 * time.Minute)
		res, err = idempotency.Run(e.ctx, e.x, eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
		require.True(t, res.Reconciled)
		require.Equal(t, "re_1", res.Value)
		require.Zero(t, res.Calls)
		require.Equal(t, idempotency.StateApplied, res.Record.State)
		calls, created := e.p.stats()
		require.Equal(t, 1, calls)
		require.Equal(t, 1, created)
	})
	t.Run("NotFoundIsSentAgainUnderANewGeneration", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		eff := e.reconciling(idempotency.ExpiredRetry)
		// The provider saved a 500 and made nothing: it replays that 500
		// under the key for as long as it remembers it.
		e.p.fail = []error{idempotency.Reconcile(errors.New("500 replayed"))}
		e.p.obs = []idempotency.Observation{{Status: 500, RequestID: "req_1", Replayed: true}}
		_, err := idempotency.Run(e.ctx, e.x, eff, r1)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		res, err := idempotency.Run(e.ctx, e.x, eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.True(t, res.Reconciled)
		require.Equal(t, 1, res.Calls)
		k, _ := eff.Key(r1)
		require.Equal(t, []string{k.String(), k.String() + "~g2"}, e.p.keys, "the second send uses a new provider key")
		require.Equal(t, k.String(), res.Record.Key, "the ledger key never changes")
		require.Equal(t, 2, res.Record.Generation)
		require.Len(t, res.Record.Evidence, 2)
		require.Equal(t, idempotency.Attempt{Generation: 1, Class: idempotency.AttemptUnknown, Status: 500, RequestID: "req_1", Replayed: true},
			withoutTimeAndError(res.Record.Evidence[0]))
		require.Equal(t, 2, res.Record.Evidence[1].Generation)
		require.Equal(t, idempotency.AttemptDone, res.Record.Evidence[1].Class)
		_, created := e.p.stats()
		require.Equal(t, 1, created)
	})
	t.Run("FindErrorsLeaveItInDoubt", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		eff := e.reconciling(idempotency.ExpiredPark)
		e.p.fail = []error{idempotency.Reconcile(errors.New("500 replayed"))}
		_, _ = idempotency.Run(e.ctx, e.x, eff, r1)
		broken := *eff
		broken.Find = func(context.Context, idempotency.Key, refund) (string, bool, error) {
			return "", false, idempotency.NotActed(errors.New("list: 503"), time.Minute)
		}
		res, err := idempotency.Run(e.ctx, e.x, &broken, r1)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.True(t, res.Reconciled)
		require.Zero(t, res.Calls)
		rec, _ := e.record(t, r1)
		require.Equal(t, idempotency.StateInDoubt, rec.State)
		require.Contains(t, rec.Reason, "list: 503")
		res, _ = idempotency.Run(e.ctx, e.x, eff, r1)
		require.Equal(t, idempotency.OutcomeNotDue, res.Outcome, "the provider's Retry-After is kept")
		e.clock.Advance(time.Minute)
		res, err = idempotency.Run(e.ctx, e.x, eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		_, created := e.p.stats()
		require.Equal(t, 1, created)
	})
	t.Run("NeverRacesALiveHolder", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		eff := e.reconciling(idempotency.ExpiredPark)
		inCall, proceed := make(chan struct{}), make(chan struct{})
		e.p.before = func(n int) {
			if n == 1 {
				close(inCall)
				<-proceed
			}
		}
		var finds atomic.Int32
		counting := *eff
		counting.Find = func(ctx context.Context, k idempotency.Key, in refund) (string, bool, error) {
			finds.Add(1)
			return e.p.find(ctx, k, in)
		}
		done := make(chan idempotency.Result[string])
		go func() { res, _ := idempotency.Run(e.ctx, e.x, &counting, r1); done <- res }()
		<-inCall
		for range 5 {
			res, err := idempotency.Run(e.ctx, e.x, &counting, r1)
			require.NoError(t, err)
			require.Equal(t, idempotency.OutcomeInFlight, res.Outcome)
		}
		close(proceed)
		require.Equal(t, idempotency.OutcomeApplied, (<-done).Outcome)
		require.Zero(t, finds.Load(), "Find never runs while a holder's lease is live")
		calls, created := e.p.stats()
		require.Equal(t, 1, calls)
		require.Equal(t, 1, created)
	})
}

func withoutTimeAndError(a idempotency.Attempt) idempotency.Attempt {
	a.At, a.Error = time.Time{}, ""
	return a
}

// TestRunNightlyCadenceAfterNotActed: night 1 is refused (429) on every
// attempt; night 2 comes past the provider's 24-hour memory. Nothing acted
// under the key, so it is simply sent: no operator ticket.
func TestRunNightlyCadenceAfterNotActed(t *testing.T) {
	t.Parallel()
	e := setup(t, &idempotency.Config{Retry: idempotency.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}})
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Expired, eff.DedupWindow = idempotency.ExpiredRetry, 24*time.Hour
	})
	rateLimited := idempotency.NotActed(errors.New("429 rate_limit"), 0)
	e.p.fail = []error{rateLimited, rateLimited, rateLimited}
	res, err := idempotency.Run(e.ctx, e.x, eff, r1)
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Equal(t, 3, res.Calls)
	e.clock.Advance(24*time.Hour + 5*time.Minute)
	res, err = idempotency.Run(e.ctx, e.x, eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, e.clock.Now().Add(24*time.Hour), res.Record.DedupUntil.Add(0), "the provider's window starts again")
	_, created := e.p.stats()
	require.Equal(t, 1, created)
	stuck, _ := e.store.ListStuck(e.ctx, idempotency.ListStuckRequest{})
	require.Empty(t, stuck)
}

// manualTicker is a tick function for KeepLease that fires only when told.
// A send returns once the keeper has taken the tick; the next send returns
// only once the extension of the previous one is done.
type manualTicker chan time.Time

func (m manualTicker) tick(time.Duration) (<-chan time.Time, func()) { return m, func() {} }

func TestKeepLeaseKeepsALongCallOwned(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	ticks := make(manualTicker)
	x := e.x.WithMiddleware(idempotency.KeepLease(ticks.tick))
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Lease, eff.Expired = time.Minute, idempotency.ExpiredRetry
	})
	inCall, proceed := make(chan struct{}), make(chan struct{})
	e.p.before = func(n int) {
		close(inCall)
		<-proceed
	}
	done := make(chan idempotency.Result[string])
	go func() { res, _ := idempotency.Run(e.ctx, x, eff, r1); done <- res }()
	<-inCall
	// Three leases long: every 50 s the keeper extends by a minute, and a
	// competing run meets a live claim each time.
	for range 3 {
		e.clock.Advance(50 * time.Second)
		ticks <- e.clock.Now()
		ticks <- e.clock.Now() // returns once the first extension is done
		res, err := idempotency.Run(e.ctx, e.x, eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeInFlight, res.Outcome, "the extended claim is still owned")
	}
	close(proceed)
	res := <-done
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	calls, created := e.p.stats()
	require.Equal(t, 1, calls)
	require.Equal(t, 1, created)
}

func TestKeepLeaseCancelsTheCallWhenTheClaimIsLost(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	ticks := make(manualTicker)
	x := e.x.WithMiddleware(idempotency.KeepLease(ticks.tick))
	var cause error
	inCall := make(chan struct{})
	eff := e.with(func(eff *idempotency.Effect[refund, string]) {
		eff.Lease = time.Minute
		eff.Call = func(ctx context.Context, k idempotency.Key, in refund) (string, error) {
			close(inCall)
			<-ctx.Done()
			cause = context.Cause(ctx)
			return "", ctx.Err()
		}
	})
	done := make(chan idempotency.Result[string])
	go func() { res, _ := idempotency.Run(e.ctx, x, eff, r1); done <- res }()
	<-inCall
	rec, _ := e.record(t, r1)
	_, err := e.store.Settle(e.ctx, idempotency.SettleRequest{Key: rec.Key, Token: rec.Token, State: idempotency.StateFailed, Force: true, Reason: "operator"})
	require.NoError(t, err)
	ticks <- e.clock.Now()
	res := <-done
	require.ErrorIs(t, cause, idempotency.ErrLeaseLost, "the call's context is cancelled with the reason")
	require.ErrorIs(t, cause, idempotency.ErrClaimLost)
	require.NotEqual(t, idempotency.OutcomeApplied, res.Outcome)
}
