package proof

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// Crash points of a batched sweep (PROOF_BATCH=1): the boundaries a batch
// adds to those of one run.
const (
	// Right after the batch's claim statement: every key of the batch is
	// claimed, none called.
	crashAfterBatchClaim = "after-batch-claim"
	// When the first group of completions is about to be written: calls
	// made, none recorded.
	crashBeforeGroupedCompletion = "before-grouped-completion"
	// Inside the transaction writing a group of completions (the hook of
	// PROOF_CRASH_AT's completion): the whole group rolls back.
	crashDuringGroupedCompletion = "during-grouped-completion"
)

func batchCrash(point string) bool {
	switch point {
	case crashAfterBatchClaim, crashBeforeGroupedCompletion, crashDuringGroupedCompletion:
		return true
	}
	return false
}

// oneByOne is the store without its batch capability: a sweep over it
// claims run by run.
type oneByOne struct{ s *pgguard.Store }

func (o oneByOne) Claim(ctx context.Context, r idempotency.ClaimRequest) (idempotency.Claim, error) {
	return o.s.Claim(ctx, r)
}

func (o oneByOne) Transition(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	return o.s.Transition(ctx, c)
}

func (o oneByOne) Lookup(ctx context.Context, keys []string) (map[string]idempotency.Record, error) {
	return o.s.Lookup(ctx, keys)
}

func (o oneByOne) LastRefusals(ctx context.Context, keys []string, since time.Time) (map[string]idempotency.Record, error) {
	return o.s.LastRefusals(ctx, keys, since)
}

// batchCrasher is the store with its batch capability, killing the worker
// at the batch crash points.
type batchCrasher struct {
	*pgguard.Store
	crash string
	kill  func()
}

func (b *batchCrasher) ClaimMany(ctx context.Context, reqs []idempotency.ClaimRequest) ([]idempotency.Claim, error) {
	claims, err := b.Store.ClaimMany(ctx, reqs)
	if b.crash == crashAfterBatchClaim {
		b.kill()
	}
	return claims, err
}

func (b *batchCrasher) TransitionMany(ctx context.Context, cs []idempotency.Change) ([]idempotency.TransitionResult, error) {
	if b.crash == crashBeforeGroupedCompletion {
		for _, c := range cs {
			if c.To == idempotency.StateApplied {
				b.kill()
			}
		}
	}
	return b.Store.TransitionMany(ctx, cs)
}

// TestBatchCrashAtEveryBoundaryThenRerun kills a worker whose sweep claims
// in batches and writes completions in groups, at each boundary a batch
// adds (after the batch claim, before a group of completions, inside one),
// then reruns: at once (live leases are respected: not one request), and
// with the ledger clock past the lease (taken over under the same keys).
// Every key ends with one object; of the requests under a key, exactly one
// acted (a second is Stripe's replay, or the first died before Stripe
// ran it).
func TestBatchCrashAtEveryBoundaryThenRerun(t *testing.T) {
	t.Parallel()
	for _, point := range []string{crashAfterBatchClaim, crashBeforeGroupedCompletion, crashDuringGroupedCompletion} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			const keys = 20
			ctx := context.Background()
			dsn := pgtest.ConnString(t)
			pool := poolFor(t, dsn)
			require.NoError(t, pgguard.Migrate(ctx, pool, nil))
			fake := newFake(t)
			batch := envBatch + "=1"

			w := startWorker(t, dsn, fake.URL(), keys, 4, 0, point, intents(keys)[7].ID, batch)
			require.Error(t, w.wait())
			require.True(t, w.killedBySIGKILL(), "worker must die of SIGKILL at %s:\n%s", point, w.out)

			// Every key applied or held under its lease; none called twice.
			byState, bad := ledgerCounts(t, ctx, pool)
			require.Zero(t, bad)
			require.Equal(t, keys, byState["applied"]+byState["calling"], "applied or held: %v", byState)
			requests := fake.RequestCount()
			for _, in := range intents(keys) {
				require.LessOrEqual(t, len(fake.Requests(keyOf(in.ID))), 1, "%s called twice before the crash", in.ID)
			}
			switch point {
			case crashAfterBatchClaim:
				require.Equal(t, map[string]int{"calling": keys}, byState, "the whole batch claimed")
				require.Zero(t, requests, "nothing called")
			case crashBeforeGroupedCompletion, crashDuringGroupedCompletion:
				require.Positive(t, byState["calling"], "the group's completions were lost with the process")
				require.Positive(t, requests)
			}

			// At once: the dead worker's leases are live, nothing is sent.
			w = startWorker(t, dsn, fake.URL(), keys, 4, 0, "", "", batch)
			require.NoError(t, w.wait(), "%s", w.out)
			require.Equal(t, requests, fake.RequestCount(), "a live lease is in flight, not taken over:\n%s", w.out)
			again, _ := ledgerCounts(t, ctx, pool)
			require.Equal(t, byState, again)

			// Past the lease: taken over under the same keys.
			w = startWorker(t, dsn, fake.URL(), keys, 4, time.Hour, "", "", batch)
			require.NoError(t, w.wait(), "%s", w.out)
			byState, bad = ledgerCounts(t, ctx, pool)
			require.Equal(t, map[string]int{"applied": keys}, byState)
			require.Zero(t, bad)
			require.Equal(t, keys, fake.Created(stripefake.KindPromotionCode), "one object per key after %s", point)
			for _, in := range intents(keys) {
				reqs := fake.Requests(keyOf(in.ID))
				require.LessOrEqual(t, len(reqs), 2, "%s", in.ID)
				executed := 0
				for _, r := range reqs {
					if r.Executed && !r.Replayed {
						executed++
					}
				}
				// A second request is Stripe's replay of the first, or the
				// first never ran (the worker died before Stripe acted).
				require.Equal(t, 1, executed, "%s: one request acted: %+v", in.ID, reqs)
			}
			t.Logf("%s: %d objects for %d keys, %d requests", point, fake.Created(stripefake.KindPromotionCode), keys, fake.RequestCount())
		})
	}
}

// TestBatchCrashAfterClaimUncalledIsTakenOver: an effect that records the
// start of each call (ExpiredRetryUncalled, a provider that ignores keys)
// claims its batch as "nothing sent": a worker killed right after the
// batch claim leaves every key free for the next run past the lease, never
// in doubt, and each key is sent exactly once.
func TestBatchCrashAfterClaimUncalledIsTakenOver(t *testing.T) {
	t.Parallel()
	const keys = 12
	ctx := context.Background()
	dsn := pgtest.ConnString(t)
	pool := poolFor(t, dsn)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	fake := newFake(t)
	env := []string{envBatch + "=1", envUncalled + "=1"}

	w := startWorker(t, dsn, fake.URL(), keys, 4, 0, crashAfterBatchClaim, "", env...)
	require.Error(t, w.wait())
	require.True(t, w.killedBySIGKILL(), "%s", w.out)
	byState, _ := ledgerCounts(t, ctx, pool)
	require.Equal(t, map[string]int{"claimed": keys}, byState)

	w = startWorker(t, dsn, fake.URL(), keys, 4, time.Hour, "", "", env...)
	require.NoError(t, w.wait(), "%s", w.out)
	byState, bad := ledgerCounts(t, ctx, pool)
	require.Equal(t, map[string]int{"applied": keys}, byState, "taken over, not left in doubt:\n%s", w.out)
	require.Zero(t, bad)
	require.Equal(t, keys, fake.Created(stripefake.KindPromotionCode))
	require.Equal(t, keys, fake.RequestCount(), "one request per intent")
}

// TestBatchCrashAfterClaimParkedEffectIsNotLeftInDoubt: an effect that
// parks expired claims (ExpiredPark, no Find) has its batch claimed as
// "nothing sent" too, each run marking its own call: a worker killed right
// after the batch claim leaves no key in doubt for an operator, though
// none of them was sent; the next run past the lease sends each once.
func TestBatchCrashAfterClaimParkedEffectIsNotLeftInDoubt(t *testing.T) {
	t.Parallel()
	const keys = 12
	ctx := context.Background()
	dsn := pgtest.ConnString(t)
	pool := poolFor(t, dsn)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	fake := newFake(t)
	env := []string{envBatch + "=1", envPark + "=1"}

	w := startWorker(t, dsn, fake.URL(), keys, 4, 0, crashAfterBatchClaim, "", env...)
	require.Error(t, w.wait())
	require.True(t, w.killedBySIGKILL(), "%s", w.out)
	byState, _ := ledgerCounts(t, ctx, pool)
	require.Equal(t, map[string]int{"claimed": keys}, byState, "claimed as nothing sent")
	require.Zero(t, fake.RequestCount())

	w = startWorker(t, dsn, fake.URL(), keys, 4, time.Hour, "", "", env...)
	require.NoError(t, w.wait(), "%s", w.out)
	byState, bad := ledgerCounts(t, ctx, pool)
	require.Equal(t, map[string]int{"applied": keys}, byState, "taken over, not left in doubt:\n%s", w.out)
	require.Zero(t, bad)
	require.Equal(t, keys, fake.Created(stripefake.KindPromotionCode))
	require.Equal(t, keys, fake.RequestCount(), "one request per intent")
}

// TestBatchFourProcessesOneEffectPerKey: 4 worker processes sweep the same
// 200 intents at once, each claiming in batches: every intent is created
// once and requested once (a batch claim of a key another process holds is
// in flight, never a second call).
func TestBatchFourProcessesOneEffectPerKey(t *testing.T) {
	t.Parallel()
	const keys, procs, conc = 200, 4, 8
	ctx := context.Background()
	dsn := pgtest.ConnString(t)
	pool := poolFor(t, dsn)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	fake := newFake(t)

	workers := make([]*worker, procs)
	for i := range procs {
		workers[i] = startWorker(t, dsn, fake.URL(), keys, conc, 0, "", "", envBatch+"=1")
	}
	var wg sync.WaitGroup
	errs := make([]error, procs)
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.wait()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "worker %d:\n%s", i, workers[i].out)
	}
	require.Equal(t, keys, fake.Created(stripefake.KindPromotionCode))
	require.Equal(t, keys, fake.RequestCount(), "one request per intent across the 4 processes")
	require.Zero(t, fake.RequestsWithoutKey())
	byState, bad := ledgerCounts(t, ctx, pool)
	require.Equal(t, map[string]int{"applied": keys}, byState)
	require.Zero(t, bad)
}
