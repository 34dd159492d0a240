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
	"github.com/effectonce/effectonce/idempotency/storetest"
)

func TestMemStoreConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, now func() time.Time) idempotency.Store {
		return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now})
	})
}

type refund struct {
	Order   string
	Request string
	Amount  int64
}

// provider is a fake provider that deduplicates by key, as Stripe does, and
// counts the objects it really created.
type provider struct {
	mu      sync.Mutex
	created map[string]string
	calls   int
	keys    []string
	fail    []error // errors returned by the next calls, in order
}

func newProvider() *provider { return &provider{created: map[string]string{}} }

func (p *provider) call(_ context.Context, k idempotency.Key, in refund) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	p.keys = append(p.keys, k.String())
	if len(p.fail) > 0 {
		err := p.fail[0]
		p.fail = p.fail[1:]
		return "", err
	}
	if id, ok := p.created[k.String()]; ok {
		return id, nil
	}
	id := fmt.Sprintf("re_%d", len(p.created)+1)
	p.created[k.String()] = id
	return id, nil
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
	clock *storetest.Clock
	x     *idempotency.Executor
	p     *provider
	eff   *idempotency.Effect[refund, string]
	ctx   context.Context
}

func setup(t *testing.T, cfg *idempotency.Config) *env {
	t.Helper()
	clock := storetest.NewClock()
	store := idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: clock.Now})
	x, err := idempotency.NewExecutor(store, cfg)
	require.NoError(t, err)
	p := newProvider()
	return &env{store: store, clock: clock, x: x, p: p, eff: refundEffect(p), ctx: context.Background()}
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
	require.Equal(t, idempotency.StatusApplied, res.Record.Status)

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
	var slow atomic.Int32
	eff := *e.eff
	eff.Call = func(ctx context.Context, k idempotency.Key, in refund) (string, error) {
		slow.Add(1)
		time.Sleep(5 * time.Millisecond) // widen the race window
		return e.p.call(ctx, k, in)
	}
	outcomes := make(chan idempotency.Outcome, 64)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
			require.NoError(t, err)
			outcomes <- res.Outcome
		}()
	}
	wg.Wait()
	close(outcomes)
	counts := map[idempotency.Outcome]int{}
	for o := range outcomes {
		counts[o]++
	}
	require.Equal(t, int32(1), slow.Load(), "64 deliveries of one intent made %d provider calls", slow.Load())
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
		require.Equal(t, idempotency.StatusApplied, me.Stored.Status)
		require.Equal(t, `"re_1"`, string(me.Stored.Result), "the mismatch error carries the stored result")
		calls, _ := e.p.stats()
		require.Equal(t, 1, calls, "a mismatch must not call the provider")
	})
	t.Run("PendingRecordInFlight", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		_, err := e.store.Claim(e.ctx, idempotency.ClaimRequest{Key: e.mustKey(t, r1), Namespace: "orders.refund", Fingerprint: fingerprint(500), Lease: time.Minute})
		require.NoError(t, err)
		res, err := idempotency.Run(e.ctx, e.x, e.eff, other)
		require.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)
		require.Equal(t, idempotency.OutcomeMismatch, res.Outcome)
		calls, _ := e.p.stats()
		require.Zero(t, calls)
	})
	t.Run("ExpiredClaimNotTakenOver", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		eff := *e.eff
		eff.Expired = idempotency.ExpiredRetry
		_, err := e.store.Claim(e.ctx, idempotency.ClaimRequest{Key: e.mustKey(t, r1), Namespace: "orders.refund", Fingerprint: fingerprint(500), Lease: time.Minute})
		require.NoError(t, err)
		e.clock.Advance(time.Hour)
		_, err = idempotency.Run(e.ctx, e.x, &eff, other)
		require.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)
		calls, _ := e.p.stats()
		require.Zero(t, calls, "an expired claim must not be taken over with another payload")
		res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome, "the right payload takes the expired claim over")
	})
}

func (e *env) mustKey(t *testing.T, in refund) string {
	t.Helper()
	k, err := e.eff.Key(in)
	require.NoError(t, err)
	return k.String()
}

// fingerprint returns the fingerprint the executor stores for amount, read
// back from one throwaway run on a fresh store.
func fingerprint(amount int64) []byte {
	x, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
	if err != nil {
		panic(err)
	}
	res, err := idempotency.Run(context.Background(), x, refundEffect(newProvider()), refund{Order: "o", Request: "r", Amount: amount})
	if err != nil {
		panic(err)
	}
	return res.Record.Fingerprint
}

func TestRunFailureClassesDecideTheClaim(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		err        error
		outcome    idempotency.Outcome
		sentinel   error
		wantStatus idempotency.Status // "" means no active record
		parked     bool
	}{
		{"Unclassified", errors.New("connection reset"), idempotency.OutcomeRetryable, idempotency.ErrRetryable, idempotency.StatusPending, false},
		{"Retryable", idempotency.Retryable(errors.New("503"), 0), idempotency.OutcomeRetryable, idempotency.ErrRetryable, idempotency.StatusPending, false},
		{"Permanent", idempotency.Permanent(errors.New("card_declined")), idempotency.OutcomePermanent, idempotency.ErrPermanent, "", false},
		{"ProviderMismatch", idempotency.Mismatch(errors.New("idempotency_error")), idempotency.OutcomeMismatch, idempotency.ErrFingerprintMismatch, "", false},
		{"Reconcile", idempotency.Reconcile(errors.New("replayed 500")), idempotency.OutcomeNeedsReconciliation, idempotency.ErrNeedsReconciliation, idempotency.StatusPending, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, nil)
			e.p.fail = []error{tc.err}
			res, err := idempotency.Run(e.ctx, e.x, e.eff, r1)
			require.ErrorIs(t, err, tc.sentinel)
			require.Equal(t, tc.outcome, res.Outcome)
			got, err := e.store.Lookup(e.ctx, []string{res.Key.String()})
			require.NoError(t, err)
			rec, ok := got[res.Key.String()]
			if tc.wantStatus == "" {
				require.False(t, ok, "the key must be free after %s", tc.name)
				require.Len(t, e.store.History(res.Key.String()), 1)
				require.Equal(t, idempotency.StatusFailed, e.store.History(res.Key.String())[0].Status)
				return
			}
			require.True(t, ok)
			require.Equal(t, tc.wantStatus, rec.Status)
			require.Equal(t, tc.parked, rec.Parked)
			require.True(t, rec.LeaseUntil.IsZero(), "a failed run must not keep holding the lease")

			// The next delivery: released claims retry at once under the same
			// key; parked ones stay parked.
			next, err := idempotency.Run(e.ctx, e.x, e.eff, r1)
			if tc.parked {
				require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
				require.Equal(t, idempotency.OutcomeNeedsReconciliation, next.Outcome)
				return
			}
			require.NoError(t, err)
			require.Equal(t, idempotency.OutcomeApplied, next.Outcome)
			require.Equal(t, []string{res.Key.String(), res.Key.String()}, e.p.keys, "the retry must reuse the key")
		})
	}
}

func TestRunRetriesInRunWithSameKey(t *testing.T) {
	t.Parallel()
	e := setup(t, &idempotency.Config{Retry: idempotency.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}})
	e.p.fail = []error{idempotency.Retryable(errors.New("409 in flight"), 0), idempotency.Retryable(errors.New("429"), time.Millisecond)}
	res, err := idempotency.Run(e.ctx, e.x, e.eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, 3, res.Calls)
	require.Len(t, e.p.keys, 3)
	require.Equal(t, e.p.keys[0], e.p.keys[1])
	require.Equal(t, e.p.keys[0], e.p.keys[2])
	require.Equal(t, 1, res.Record.Attempts, "in-run retries keep the same claim")
}

func TestRunExpiredClaimPolicy(t *testing.T) {
	t.Parallel()
	crash := func(e *env) {
		// A worker claimed and died before recording.
		_, err := e.store.Claim(e.ctx, idempotency.ClaimRequest{Key: e.mustKeyNoT(r1), Namespace: "orders.refund", Fingerprint: fingerprint(500), Lease: time.Minute})
		if err != nil {
			panic(err)
		}
	}
	t.Run("ParkByDefault", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		crash(e)
		res, err := idempotency.Run(e.ctx, e.x, e.eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeInFlight, res.Outcome, "a live lease is in flight")
		e.clock.Advance(2 * time.Minute)
		res, err = idempotency.Run(e.ctx, e.x, e.eff, r1)
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
		require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
		calls, _ := e.p.stats()
		require.Zero(t, calls, "the default policy never retries an unknown outcome")
		stuck, err := e.store.ListStuck(e.ctx, idempotency.ListStuckRequest{Namespace: "orders.refund"})
		require.NoError(t, err)
		require.Len(t, stuck, 1)
	})
	t.Run("RetryInsideWindow", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		eff := *e.eff
		eff.Expired, eff.DedupWindow = idempotency.ExpiredRetry, 24*time.Hour
		crash(e)
		e.clock.Advance(2 * time.Minute)
		res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 2, res.Record.Attempts)
	})
	t.Run("ParkPastWindow", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil)
		eff := *e.eff
		eff.Expired, eff.DedupWindow = idempotency.ExpiredRetry, 24*time.Hour
		crash(e)
		e.clock.Advance(25 * time.Hour)
		res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
		require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
		calls, _ := e.p.stats()
		require.Zero(t, calls, "past the provider's window a retry could duplicate the effect")
	})
}

func (e *env) mustKeyNoT(in refund) string {
	k, err := e.eff.Key(in)
	if err != nil {
		panic(err)
	}
	return k.String()
}

func TestRunLateWorkerCannotComplete(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := *e.eff
	eff.Expired = idempotency.ExpiredRetry
	inCall := make(chan struct{})
	proceed := make(chan struct{})
	var first atomic.Bool
	eff.Call = func(ctx context.Context, k idempotency.Key, in refund) (string, error) {
		if first.CompareAndSwap(false, true) {
			close(inCall)
			<-proceed // stalls past its lease
		}
		return e.p.call(ctx, k, in)
	}
	done := make(chan idempotency.Result[string])
	go func() {
		res, _ := idempotency.Run(e.ctx, e.x, &eff, r1)
		done <- res
	}()
	<-inCall
	e.clock.Advance(10 * time.Minute)
	res2, err := idempotency.Run(e.ctx, e.x, &eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res2.Outcome)
	close(proceed)
	late := <-done
	require.Equal(t, idempotency.OutcomeInFlight, late.Outcome)
	require.ErrorIs(t, late.Err, idempotency.ErrClaimLost)
	_, created := e.p.stats()
	require.Equal(t, 1, created, "the provider deduplicated under the shared key")
	recs, err := e.store.Lookup(e.ctx, []string{res2.Key.String()})
	require.NoError(t, err)
	require.Equal(t, res2.Record.Token, recs[res2.Key.String()].Token, "the late worker must not overwrite the record")
}

func TestRunSkipIsRecorded(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := *e.eff
	var calls int
	eff.Call = func(context.Context, idempotency.Key, refund) (string, error) {
		calls++
		return "nothing to refund", idempotency.Skip("order already refunded offline")
	}
	res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeSkipped, res.Outcome)
	require.Equal(t, idempotency.StatusSkipped, res.Record.Status)
	res, err = idempotency.Run(e.ctx, e.x, &eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Equal(t, "nothing to refund", res.Value)
	require.Equal(t, 1, calls)
}

type badCodec struct{}

func (badCodec) Encode(string) ([]byte, error) { return nil, errors.New("cannot encode") }
func (badCodec) Decode([]byte) (string, error) { return "", nil }

func TestRunUnencodableResultParksAndWritesNoAppliedRow(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := *e.eff
	eff.Codec = badCodec{}
	res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
	require.ErrorIs(t, err, idempotency.ErrEncodeResult)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
	recs, err := e.store.Lookup(e.ctx, []string{res.Key.String()})
	require.NoError(t, err)
	rec := recs[res.Key.String()]
	require.Equal(t, idempotency.StatusPending, rec.Status)
	require.True(t, rec.Parked)
	require.Nil(t, rec.Result)
}

func TestRunOnCompleteHook(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := *e.eff
	var rows []string
	fail := true
	eff.Expired = idempotency.ExpiredRetry
	eff.OnComplete = func(ctx context.Context, tx any, in refund, out string) error {
		if fail {
			return errors.New("domain table unavailable")
		}
		rows = append(rows, in.Request+"->"+out)
		return nil
	}
	res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
	require.Error(t, err)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	require.Empty(t, rows)
	e.clock.Advance(10 * time.Minute)
	fail = false
	res, err = idempotency.Run(e.ctx, e.x, &eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, []string{"rr_1->re_1"}, rows)
	_, created := e.p.stats()
	require.Equal(t, 1, created)
}

func TestRunRejectsInvalidEffectsBeforeTouchingTheStore(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	noCall := *e.eff
	noCall.Call = nil
	noKey := *e.eff
	noKey.Key = nil
	badKey := *e.eff
	badKey.Key = func(in refund) (idempotency.Key, error) { return refundKeys.Key(idempotency.Str("order", "")) }
	for name, eff := range map[string]*idempotency.Effect[refund, string]{"nil": nil, "noCall": &noCall, "noKey": &noKey} {
		_, err := idempotency.Run(e.ctx, e.x, eff, r1)
		require.ErrorIs(t, err, idempotency.ErrInvalidEffect, name)
	}
	_, err := idempotency.Run(e.ctx, e.x, &badKey, r1)
	require.ErrorIs(t, err, idempotency.ErrEmptyPart)
	stuck, _ := e.store.ListStuck(e.ctx, idempotency.ListStuckRequest{})
	require.Empty(t, stuck)
	_, err = idempotency.NewExecutor(nil, nil)
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
	eff := *e.eff
	eff.Key = func(in refund) (idempotency.Key, error) {
		return secret.Key(idempotency.Str("order", in.Order), idempotency.Str("request", in.Request))
	}
	e.p.fail = []error{errors.New("boom")}
	_, _ = idempotency.Run(e.ctx, e.x, &eff, r1)
	_, _ = idempotency.Run(e.ctx, e.x, &eff, r1)
	_, _ = idempotency.Run(e.ctx, e.x, &eff, r1)
	k, _ := eff.Key(r1)
	require.NotContains(t, buf.String(), k.String())
	require.NotContains(t, buf.String(), "ord_1")
	require.Contains(t, buf.String(), "orders.refund:<hmac>")
	require.Len(t, events, 3)
	require.Equal(t, []idempotency.Outcome{idempotency.OutcomeRetryable, idempotency.OutcomeApplied, idempotency.OutcomeAlreadyApplied},
		[]idempotency.Outcome{events[0].Outcome, events[1].Outcome, events[2].Outcome})
}

func TestRunExpiredRetryUncalledNeverCallsTwice(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := *e.eff
	eff.Expired = idempotency.ExpiredRetryUncalled

	// A worker that died after claiming, before calling: taken over.
	_, err := e.store.Claim(e.ctx, idempotency.ClaimRequest{Key: e.mustKeyNoT(r1), Namespace: "orders.refund", Fingerprint: fingerprint(500), Lease: time.Minute})
	require.NoError(t, err)
	e.clock.Advance(2 * time.Minute)
	res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)

	// A worker that died after its call started: parked, never called again.
	r2 := refund{Order: "ord_1", Request: "rr_2", Amount: 100}
	crashing := eff
	crashing.OnComplete = func(context.Context, any, refund, string) error { return errors.New("crash") }
	res, _ = idempotency.Run(e.ctx, e.x, &crashing, r2)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	e.clock.Advance(10 * time.Minute)
	res, err = idempotency.Run(e.ctx, e.x, &eff, r2)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Zero(t, res.Calls)
	calls, _ := e.p.stats()
	require.Equal(t, 2, calls, "one call per intent, none from a takeover after a started call")
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

func TestRunOnFailHookRecordsTheRefusalWithTheFailure(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := *e.eff
	var rows []string
	hookErr := errors.New("domain table unavailable")
	fail := true
	eff.OnFail = func(ctx context.Context, tx any, in refund, cause error) error {
		if fail {
			return hookErr
		}
		rows = append(rows, in.Request+": "+cause.Error())
		return nil
	}
	e.p.fail = []error{idempotency.Permanent(errors.New("charge_already_refunded")), idempotency.Permanent(errors.New("charge_already_refunded"))}

	res, err := idempotency.Run(e.ctx, e.x, &eff, r1)
	require.ErrorIs(t, err, hookErr)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	recs, _ := e.store.Lookup(e.ctx, []string{res.Key.String()})
	require.Equal(t, idempotency.StatusPending, recs[res.Key.String()].Status, "a failed hook marks nothing")
	require.Empty(t, rows)

	fail = false
	e.clock.Advance(time.Hour)
	eff.Expired = idempotency.ExpiredRetry
	res, err = idempotency.Run(e.ctx, e.x, &eff, r1)
	require.ErrorIs(t, err, idempotency.ErrPermanent)
	require.Equal(t, idempotency.OutcomePermanent, res.Outcome)
	require.Equal(t, idempotency.StatusFailed, res.Record.Status)
	require.Equal(t, []string{"rr_1: charge_already_refunded"}, rows)
}
