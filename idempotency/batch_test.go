package idempotency_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
)

// spyBatch counts the calls a batch store receives and the size of each.
type spyBatch struct {
	idempotency.BatchStore
	mu          sync.Mutex
	claimMany   []int
	changeMany  []int
	claims      int
	transitions int
	failClaims  error
}

func (s *spyBatch) Claim(ctx context.Context, r idempotency.ClaimRequest) (idempotency.Claim, error) {
	s.mu.Lock()
	s.claims++
	s.mu.Unlock()
	return s.BatchStore.Claim(ctx, r)
}

func (s *spyBatch) Transition(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	s.mu.Lock()
	s.transitions++
	s.mu.Unlock()
	return s.BatchStore.Transition(ctx, c)
}

func (s *spyBatch) ClaimMany(ctx context.Context, rs []idempotency.ClaimRequest) ([]idempotency.Claim, error) {
	s.mu.Lock()
	s.claimMany = append(s.claimMany, len(rs))
	fail := s.failClaims
	s.mu.Unlock()
	if fail != nil {
		return nil, fail
	}
	return s.BatchStore.ClaimMany(ctx, rs)
}

func (s *spyBatch) TransitionMany(ctx context.Context, cs []idempotency.Change) ([]idempotency.TransitionResult, error) {
	s.mu.Lock()
	s.changeMany = append(s.changeMany, len(cs))
	s.mu.Unlock()
	return s.BatchStore.TransitionMany(ctx, cs)
}

func (s *spyBatch) sizes() (claims, changes []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.claimMany...), append([]int(nil), s.changeMany...)
}

// manualTimer is a GroupCommitConfig.After that reports each timer started
// and fires only when the test says so.
type manualTimer struct {
	started chan time.Duration
	fire    chan time.Time
}

func newManualTimer() *manualTimer {
	return &manualTimer{started: make(chan time.Duration, 16), fire: make(chan time.Time)}
}

func (m *manualTimer) after(d time.Duration) <-chan time.Time {
	m.started <- d
	return m.fire
}

func neverFires(time.Duration) <-chan time.Time { return nil }

func runAll(t *testing.T, n int, run func(i int) (idempotency.Result[string], error)) []idempotency.Result[string] {
	t.Helper()
	out := make([]idempotency.Result[string], n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = run(i)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	return out
}

func TestGroupCommitEightRunsCostOneClaimAndOneCompletion(t *testing.T) {
	t.Parallel()
	spy := &spyBatch{BatchStore: idempotency.NewMemStore(nil)}
	g, err := idempotency.GroupCommit(spy, &idempotency.GroupCommitConfig{MaxBatch: 8, Window: time.Hour, After: neverFires})
	require.NoError(t, err)
	x, err := idempotency.NewExecutor(g, nil)
	require.NoError(t, err)
	p := newProvider()
	eff := refundEffect(p)

	res := runAll(t, 8, func(i int) (idempotency.Result[string], error) {
		return idempotency.Run(context.Background(), x, eff, refund{Order: "o", Request: string(rune('a' + i)), Amount: 100})
	})
	for _, r := range res {
		require.Equal(t, idempotency.OutcomeApplied, r.Outcome)
		require.Len(t, r.Record.Evidence, 1, "each completion keeps its run's evidence")
	}
	claims, changes := spy.sizes()
	require.Equal(t, []int{8}, claims, "the 8 claims in one group, sent as soon as it was full")
	require.Equal(t, []int{8}, changes, "the 8 completions in one group")
	require.Zero(t, spy.claims+spy.transitions, "nothing one by one")
	calls, created := p.stats()
	require.Equal(t, 8, calls)
	require.Equal(t, 8, created)
}

func TestGroupCommitSameKeyInOneGroupCallsOnce(t *testing.T) {
	t.Parallel()
	spy := &spyBatch{BatchStore: idempotency.NewMemStore(nil)}
	// The window is a timer the test controls, never real time: the
	// claims' group must go because it is full (MaxBatch 4), however slowly
	// its members arrive; every later group (the one completion) goes when
	// the test fires its timer.
	timer := newManualTimer()
	g, err := idempotency.GroupCommit(spy, &idempotency.GroupCommitConfig{MaxBatch: 4, Window: time.Hour, After: timer.after})
	require.NoError(t, err)
	x, err := idempotency.NewExecutor(g, nil)
	require.NoError(t, err)
	p := newProvider()
	eff := refundEffect(p)
	in := refund{Order: "o", Request: "r", Amount: 100}

	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// The first timer is the claims' group's: its leader starts it
		// before its claim is answered, so before any change exists. It
		// never fires. Every later one is a change group's: fire it.
		select {
		case <-timer.started:
		case <-stop:
			return
		}
		for {
			select {
			case <-timer.started:
			case <-stop:
				return
			}
			select {
			case timer.fire <- time.Now():
			case <-stop:
				return
			}
		}
	}()

	res := runAll(t, 4, func(int) (idempotency.Result[string], error) {
		return idempotency.Run(context.Background(), x, eff, in)
	})
	outcomes := map[idempotency.Outcome]int{}
	for _, r := range res {
		outcomes[r.Outcome]++
	}
	require.Equal(t, map[idempotency.Outcome]int{idempotency.OutcomeApplied: 1, idempotency.OutcomeInFlight: 3}, outcomes,
		"four deliveries of one intent in one group: one acquires, the others meet its live claim")
	calls, _ := p.stats()
	require.Equal(t, 1, calls)
	claims, changes := spy.sizes()
	require.Equal(t, []int{4}, claims, "the four claims in one group")
	require.Equal(t, []int{1}, changes, "the one completion")
}

func TestGroupCommitWindowAndCloseSendAGroupThatIsNotFull(t *testing.T) {
	t.Parallel()
	spy := &spyBatch{BatchStore: idempotency.NewMemStore(nil)}
	timer := newManualTimer()
	g, err := idempotency.GroupCommit(spy, &idempotency.GroupCommitConfig{MaxBatch: 8, Window: 3 * time.Millisecond, After: timer.after})
	require.NoError(t, err)
	x, err := idempotency.NewExecutor(g, nil)
	require.NoError(t, err)
	p := newProvider()
	eff := refundEffect(p)

	done := make(chan idempotency.Result[string], 1)
	go func() {
		res, _ := idempotency.Run(context.Background(), x, eff, refund{Order: "o", Request: "alone", Amount: 1})
		done <- res
	}()
	require.Equal(t, 3*time.Millisecond, <-timer.started, "the claim waits for company, at most the window")
	timer.fire <- time.Now()
	require.Equal(t, 3*time.Millisecond, <-timer.started, "then the completion does")
	g.Close() // sends the completion's group at once
	res := <-done
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	claims, changes := spy.sizes()
	require.Equal(t, []int{1}, claims)
	require.Equal(t, []int{1}, changes)

	// Closed: later runs go to the store one change at a time, unbatched
	// but the same.
	res, err = idempotency.Run(context.Background(), x, eff, refund{Order: "o", Request: "later", Amount: 1})
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	claims, changes = spy.sizes()
	require.Equal(t, []int{1, 1}, claims)
	require.Equal(t, []int{1, 1}, changes)
}

func TestGroupCommitFailedStatementFailsEveryMember(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset")
	spy := &spyBatch{BatchStore: idempotency.NewMemStore(nil), failClaims: boom}
	g, err := idempotency.GroupCommit(spy, &idempotency.GroupCommitConfig{MaxBatch: 3, After: neverFires})
	require.NoError(t, err)
	x, err := idempotency.NewExecutor(g, nil)
	require.NoError(t, err)
	p := newProvider()
	eff := refundEffect(p)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := idempotency.Run(context.Background(), x, eff, refund{Order: "o", Request: string(rune('a' + i)), Amount: 1})
			require.ErrorIs(t, err, boom)
			require.Equal(t, idempotency.OutcomeError, res.Outcome)
		}()
	}
	wg.Wait()
	calls, _ := p.stats()
	require.Zero(t, calls, "no provider call without a claim")
}

type callerValue struct{}

func TestGroupCommitHookSeesItsRunsContext(t *testing.T) {
	t.Parallel()
	g, err := idempotency.GroupCommit(idempotency.NewMemStore(nil), &idempotency.GroupCommitConfig{MaxBatch: 2, Window: time.Hour, After: neverFires})
	require.NoError(t, err)
	x, err := idempotency.NewExecutor(g, nil)
	require.NoError(t, err)
	p := newProvider()
	eff := refundEffect(p)
	var mu sync.Mutex
	seen := map[string]any{}
	eff.OnComplete = func(ctx context.Context, in refund, _ string) error {
		mu.Lock()
		defer mu.Unlock()
		seen[in.Request] = ctx.Value(callerValue{})
		return nil
	}
	runAll(t, 2, func(i int) (idempotency.Result[string], error) {
		req := string(rune('a' + i))
		ctx := context.WithValue(context.Background(), callerValue{}, "caller "+req)
		return idempotency.Run(ctx, x, eff, refund{Order: "o", Request: req, Amount: 1})
	})
	require.Equal(t, map[string]any{"a": "caller a", "b": "caller b"}, seen)
}

func TestGroupCommitRejectsBadConfig(t *testing.T) {
	t.Parallel()
	_, err := idempotency.GroupCommit(nil, nil)
	require.ErrorIs(t, err, idempotency.ErrNilStore)
	_, err = idempotency.GroupCommit(idempotency.NewMemStore(nil), &idempotency.GroupCommitConfig{Window: -time.Second})
	require.Error(t, err)
}

func TestRunClaimedStartsFromAClaimMadeAhead(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	ctx := context.Background()
	eff := e.eff
	ins := []refund{{Order: "o", Request: "1", Amount: 5}, {Order: "o", Request: "2", Amount: 5}, {Order: "o", Request: "1", Amount: 5}}
	reqs := make([]idempotency.ClaimRequest, len(ins))
	for i, in := range ins {
		k, fp, err := eff.Identity(in)
		require.NoError(t, err)
		reqs[i] = idempotency.ClaimRequestFor(e.x, eff, k, fp)
		require.Equal(t, 5*time.Minute, reqs[i].Lease, "the executor's default lease")
	}
	at := e.x.Now()
	claims, err := e.store.ClaimMany(ctx, reqs)
	require.NoError(t, err)

	var events []idempotency.Outcome
	x := e.x
	for i, in := range ins {
		res, err := idempotency.RunClaimed(ctx, x, eff, in, claims[i], at)
		require.NoError(t, err)
		events = append(events, res.Outcome)
	}
	require.Equal(t, []idempotency.Outcome{idempotency.OutcomeApplied, idempotency.OutcomeApplied, idempotency.OutcomeInFlight}, events,
		"the repeated key met the first one's claim in the batch")
	calls, _ := e.p.stats()
	require.Equal(t, 2, calls)

	// A claim answered done is the stored result, without a call.
	done, err := e.store.ClaimMany(ctx, reqs[:1])
	require.NoError(t, err)
	res, err := idempotency.RunClaimed(ctx, x, eff, ins[0], done[0], e.x.Now())
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Equal(t, "re_1", res.Value)

	// A claim for another key is refused.
	_, err = idempotency.RunClaimed(ctx, x, eff, ins[1], done[0], e.x.Now())
	require.ErrorIs(t, err, idempotency.ErrInvalidEffect)
}

func TestRunClaimedReleasesAClaimWhoseRunIsCancelled(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := e.eff
	in := refund{Order: "o", Request: "cancelled", Amount: 5}
	k, fp, err := eff.Identity(in)
	require.NoError(t, err)
	claims, err := e.store.ClaimMany(context.Background(), []idempotency.ClaimRequest{idempotency.ClaimRequestFor(e.x, eff, k, fp)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := idempotency.RunClaimed(ctx, e.x, eff, in, claims[0], e.x.Now())
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Zero(t, res.Calls)
	rec, ok := e.record(t, in)
	require.True(t, ok)
	require.Equal(t, idempotency.StateReleased, rec.State, "a claim made ahead is released, never left held")
}

func TestRunClaimedMeasuresTheWindowFromTheClaim(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	eff := e.with(func(f *idempotency.Effect[refund, string]) {
		f.Expired, f.DedupWindow, f.Lease = idempotency.ExpiredRetry, time.Hour, time.Minute
	})
	in := refund{Order: "o", Request: "late", Amount: 5}
	k, fp, err := eff.Identity(in)
	require.NoError(t, err)
	at := e.x.Now()
	claims, err := e.store.ClaimMany(context.Background(), []idempotency.ClaimRequest{idempotency.ClaimRequestFor(e.x, eff, k, fp)})
	require.NoError(t, err)
	// The run starts past the provider's window, counted from the claim
	// (a caller that let its lease lapse too: the executor still must not
	// call a provider that may have forgotten the key).
	e.clock.Advance(time.Hour + time.Second)
	res, err := idempotency.RunClaimed(context.Background(), e.x, eff, in, claims[0], at)
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Zero(t, res.Calls, "no call past the window measured from the claim")
}
