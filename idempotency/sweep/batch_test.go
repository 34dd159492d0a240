package sweep_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

// batchSpy counts what a sweep asks of a batch store.
type batchSpy struct {
	idempotency.BatchStore
	mu          sync.Mutex
	lookups     int
	claimMany   []int
	changeMany  [][]idempotency.Change
	claims      int
	transitions int
}

func (s *batchSpy) Lookup(ctx context.Context, keys []string) (map[string]idempotency.Record, error) {
	s.mu.Lock()
	s.lookups++
	s.mu.Unlock()
	return s.BatchStore.Lookup(ctx, keys)
}

func (s *batchSpy) Claim(ctx context.Context, r idempotency.ClaimRequest) (idempotency.Claim, error) {
	s.mu.Lock()
	s.claims++
	s.mu.Unlock()
	return s.BatchStore.Claim(ctx, r)
}

func (s *batchSpy) Transition(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	s.mu.Lock()
	s.transitions++
	s.mu.Unlock()
	return s.BatchStore.Transition(ctx, c)
}

func (s *batchSpy) ClaimMany(ctx context.Context, rs []idempotency.ClaimRequest) ([]idempotency.Claim, error) {
	s.mu.Lock()
	s.claimMany = append(s.claimMany, len(rs))
	s.mu.Unlock()
	return s.BatchStore.ClaimMany(ctx, rs)
}

func (s *batchSpy) TransitionMany(ctx context.Context, cs []idempotency.Change) ([]idempotency.TransitionResult, error) {
	s.mu.Lock()
	s.changeMany = append(s.changeMany, append([]idempotency.Change(nil), cs...))
	s.mu.Unlock()
	return s.BatchStore.TransitionMany(ctx, cs)
}

func (s *batchSpy) groups() (sizes []int, kinds map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kinds = map[string]int{}
	for _, g := range s.changeMany {
		sizes = append(sizes, len(g))
		for _, c := range g {
			switch {
			case c.To == "":
				kinds["extend"]++
			default:
				kinds[string(c.To)]++
			}
		}
	}
	return sizes, kinds
}

// never is a Config.After whose timer never fires: changes are written by
// size, or when no run can add one, only.
func never(time.Duration) <-chan time.Time { return nil }

// TestBatchSweepOfAParkingEffectMarksCallsInGroups: an effect that parks
// expired claims (ExpiredPark) has its batch claimed as "nothing sent", so
// that a crash leaves no unsent key in doubt; each run marks its call, and
// the marks join the groups of changes: a group goes when the 8 runs
// holding a slot all wait in it, so it never holds more than 8 marks, and
// no change is written alone.
func TestBatchSweepOfAParkingEffectMarksCallsInGroups(t *testing.T) {
	t.Parallel()
	spy := &batchSpy{BatchStore: memStore()}
	p := newProvider()
	rep, err := sweep.Run(context.Background(), newExecutor(t, spy), p.effect(), sweep.Slice(promos(0, 1000)),
		&sweep.Config{BatchSize: 500, Concurrency: 8, After: never})
	require.NoError(t, err)
	requireAccounted(t, rep)
	require.Equal(t, 1000, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, []int{500, 500}, spy.claimMany, "one claim per batch")
	sizes, kinds := spy.groups()
	require.Equal(t, map[string]int{"calling": 1000, "applied": 1000}, kinds, "every call marked, every run completed")
	require.Zero(t, spy.claims+spy.transitions, "nothing one by one")
	marks := 0
	for _, g := range spy.changeMany {
		n := 0
		for _, c := range g {
			if c.To == idempotency.StateCalling {
				n++
			}
		}
		require.LessOrEqual(t, n, 8, "at most one mark per slot in a group")
		marks += n
	}
	require.Equal(t, 1000, marks)
	// 125 groups at the least (8 marks each); the tail of each batch, fewer
	// than 8 runs, may go in smaller ones.
	require.GreaterOrEqual(t, len(sizes), 125)
	require.LessOrEqual(t, len(sizes), 125+2*2*8, "groups: %v", sizes)
	calls, created := p.stats()
	require.Equal(t, 1000, calls)
	require.Equal(t, 1000, created)
}

func TestBatchSweepClaimsAndCompletesOncePerBatch(t *testing.T) {
	t.Parallel()
	spy := &batchSpy{BatchStore: memStore()}
	p := newProvider()
	items := promos(0, 1000)
	rep, err := sweep.Run(context.Background(), newExecutor(t, spy), p.dedupEffect(), sweep.Slice(items),
		&sweep.Config{BatchSize: 500, Concurrency: 8, After: never})
	require.NoError(t, err)
	requireAccounted(t, rep)
	require.Equal(t, 1000, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 2, spy.lookups)
	require.Equal(t, []int{500, 500}, spy.claimMany, "one claim per batch")
	require.Equal(t, 2, rep.ClaimBatches)
	sizes, kinds := spy.groups()
	require.Equal(t, []int{500, 500}, sizes, "the completions of a batch written together")
	require.Equal(t, map[string]int{"applied": 1000}, kinds)
	require.Zero(t, spy.claims+spy.transitions, "nothing one by one")
	calls, created := p.stats()
	require.Equal(t, 1000, calls)
	require.Equal(t, 1000, created)

	// The second pass: the pre-flight settles everything, nothing claimed.
	again, err := sweep.Run(context.Background(), newExecutor(t, spy), p.effect(), sweep.Slice(items), &sweep.Config{After: never})
	require.NoError(t, err)
	require.Equal(t, 1000, again.Outcomes[idempotency.OutcomeAlreadyApplied])
	require.Equal(t, []int{500, 500}, spy.claimMany)
}

func TestBatchSweepPreflightScenario(t *testing.T) {
	t.Parallel()
	spy := &batchSpy{BatchStore: memStore()}
	rep := preflightScenario(t, spy, nil)
	require.Equal(t, (bigSweep-bigApplied)/bigBatch, rep.ClaimBatches, "claims only in the batches with work left")
}

func TestBatchSweepCancelLeavesEveryKeyAppliedOrReleased(t *testing.T) {
	t.Parallel()
	rep := cancelScenario(t, memStore(), 2_000, 130)
	require.Positive(t, rep.ClaimBatches)
	t.Logf("%s", rep)
}

func TestBatchSweepBoundsProviderCallsInFlight(t *testing.T) {
	t.Parallel()
	const conc = 3
	var now, peak atomic.Int32
	p := newProvider()
	p.before = func(context.Context, int, promo) error {
		n := now.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		time.Sleep(time.Millisecond) // let others pile up, if they could
		now.Add(-1)
		return nil
	}
	rep, err := sweep.Run(context.Background(), newExecutor(t, memStore()), p.effect(), sweep.Slice(promos(0, 60)),
		&sweep.Config{BatchSize: 60, Concurrency: conc})
	require.NoError(t, err)
	require.Equal(t, 60, rep.Outcomes[idempotency.OutcomeApplied])
	require.LessOrEqual(t, int(peak.Load()), conc, "at most Concurrency provider calls at once")
}

// A slow batch: the provider takes a quarter of the lease per call (on the
// shared fake clock), so claims waiting for their turn would expire. The
// sweep extends the waiting claims, in one statement, before they do:
// nothing is lost, taken over or called twice.
func TestBatchSweepExtendsClaimsWaitingForTheirTurn(t *testing.T) {
	t.Parallel()
	clock := clocktest.New()
	spy := &batchSpy{BatchStore: idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: clock.Now})}
	x, err := idempotency.NewExecutor(spy, &idempotency.Config{Now: clock.Now, Lease: time.Minute})
	require.NoError(t, err)
	p := newProvider()
	p.before = func(context.Context, int, promo) error { clock.Advance(15 * time.Second); return nil }
	items := promos(0, 12)
	rep, err := sweep.Run(context.Background(), x, p.effect(), sweep.Slice(items), &sweep.Config{Concurrency: 1, After: never})
	require.NoError(t, err)
	require.Equal(t, 12, rep.Outcomes[idempotency.OutcomeApplied], "%s", rep)
	_, kinds := spy.groups()
	require.Positive(t, kinds["extend"], "the waiting claims were extended")
	require.Equal(t, 12, kinds["applied"])
	calls, created := p.stats()
	require.Equal(t, 12, calls)
	require.Equal(t, 12, created)
	require.Equal(t, 12, requireAppliedOrReleased(t, spy, p.effect(), items))
}

func TestBatchSweepHooksRunWithTheirOwnCompletion(t *testing.T) {
	t.Parallel()
	store := memStore()
	p := newProvider()
	eff := p.effect()
	var mu sync.Mutex
	recorded := map[string]bool{}
	eff.OnComplete = func(_ context.Context, in promo, _ string) error {
		if in.User == "u_3" {
			return errors.New("domain row refused")
		}
		mu.Lock()
		recorded[in.User] = true
		mu.Unlock()
		return nil
	}
	items := promos(0, 8)
	rep, err := sweep.Run(context.Background(), newExecutor(t, store), eff, sweep.Slice(items), &sweep.Config{After: never})
	require.NoError(t, err)
	require.Equal(t, 7, rep.Outcomes[idempotency.OutcomeApplied], "one failing hook does not undo the others")
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeError])
	require.Len(t, recorded, 7)
	k, _, err := eff.Identity(items[3])
	require.NoError(t, err)
	recs, err := store.Lookup(context.Background(), []string{k.String()})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateCalling, recs[k.String()].State, "its claim stays held until its lease ends")
}

// An effect that records the start of each call: the markings are grouped
// too, and every key is applied once.
func TestBatchSweepRecordsCallStartsInGroups(t *testing.T) {
	t.Parallel()
	spy := &batchSpy{BatchStore: memStore()}
	p := newProvider()
	eff := p.effect()
	eff.Expired = idempotency.ExpiredRetryUncalled
	rep, err := sweep.Run(context.Background(), newExecutor(t, spy), eff, sweep.Slice(promos(0, 40)),
		&sweep.Config{Concurrency: 4, After: never})
	require.NoError(t, err)
	require.Equal(t, 40, rep.Outcomes[idempotency.OutcomeApplied])
	sizes, kinds := spy.groups()
	require.Equal(t, map[string]int{"calling": 40, "applied": 40}, kinds)
	require.Less(t, len(sizes), 80, "grouped, not one by one: %v", sizes)
}

func TestRunRejectsNegativeFlushDelay(t *testing.T) {
	t.Parallel()
	_, err := sweep.Run(context.Background(), newExecutor(t, memStore()), newProvider().effect(), sweep.Slice(promos(0, 1)),
		&sweep.Config{FlushDelay: -time.Second})
	require.ErrorIs(t, err, sweep.ErrInvalidConfig)
}

type failingClaimMany struct{ idempotency.BatchStore }

func (failingClaimMany) ClaimMany(context.Context, []idempotency.ClaimRequest) ([]idempotency.Claim, error) {
	return nil, errors.New("connection reset")
}

func TestBatchSweepStopsWhenTheClaimFails(t *testing.T) {
	t.Parallel()
	p := newProvider()
	rep, err := sweep.Run(context.Background(), newExecutor(t, failingClaimMany{memStore()}), p.effect(), sweep.Slice(promos(0, 30)), &sweep.Config{BatchSize: 10})
	require.ErrorContains(t, err, "connection reset")
	require.ErrorContains(t, err, "claim of 10 keys")
	requireAccounted(t, rep)
	require.Equal(t, 10, rep.Candidates, "no batch after the failed one")
	require.Equal(t, 10, rep.Unstarted)
	calls, _ := p.stats()
	require.Zero(t, calls)
}
