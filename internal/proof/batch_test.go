package proof

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
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
			r := newRig(t, nil)
			batch := envBatch + "=1"
			crashAt := intents(keys)[7].ID

			w := startWorker(t, r.dsn, r.fake.URL(), keys, 4, 0, point, crashAt, batch)
			require.Error(t, w.wait())
			require.True(t, w.killedBySIGKILL(), "worker must die of SIGKILL at %s:\n%s", point, w.out)

			// Every key applied or held under its lease; none called twice.
			byState, bad := ledgerCounts(t, r.ctx, r.pool)
			require.Zero(t, bad)
			require.Equal(t, keys, byState["applied"]+byState["calling"], "applied or held: %v", byState)
			requests := r.fake.RequestCount()
			for _, in := range intents(keys) {
				require.LessOrEqual(t, len(r.fake.Requests(keyOf(in.ID))), 1, "%s called twice before the crash", in.ID)
			}
			switch point {
			case crashAfterBatchClaim:
				require.Equal(t, map[string]int{"calling": keys}, byState, "the whole batch claimed")
				require.Zero(t, requests, "nothing called")
			case crashBeforeGroupedCompletion:
				require.Zero(t, byState["applied"], "the first group of completions was never written: %v", byState)
				require.Positive(t, requests)
			case crashDuringGroupedCompletion:
				// The hook of crashAt's completion killed the process
				// inside its group's transaction: that completion (and
				// its group) did not commit.
				require.Equal(t, idempotency.StateCalling, stateOf(t, r, keyOf(crashAt)))
				require.Positive(t, byState["calling"], "the group's completions were lost with the process")
				require.Positive(t, requests)
			}

			// At once: the dead worker's leases are live, nothing is sent.
			w = startWorker(t, r.dsn, r.fake.URL(), keys, 4, 0, "", "", batch)
			require.NoError(t, w.wait(), "%s", w.out)
			require.Equal(t, requests, r.fake.RequestCount(), "a live lease is in flight, not taken over:\n%s", w.out)
			again, _ := ledgerCounts(t, r.ctx, r.pool)
			require.Equal(t, byState, again)

			// Past the lease: taken over under the same keys. A second
			// request under a key is Stripe's replay of the first, or the
			// first never ran (the worker died before Stripe acted):
			// exactly one acted (requireOnePerKey).
			w = startWorker(t, r.dsn, r.fake.URL(), keys, 4, time.Hour, "", "", batch)
			require.NoError(t, w.wait(), "%s", w.out)
			requireAllApplied(t, r.ctx, r.pool, keys)
			requireOnePerKey(t, r.fake, keysOf(intents(keys))...)
			for _, in := range intents(keys) {
				require.LessOrEqual(t, len(r.fake.Requests(keyOf(in.ID))), 2, "%s", in.ID)
			}
			t.Logf("%s: %d objects for %d keys, %d requests", point, r.fake.Created(stripefake.KindPromotionCode), keys, r.fake.RequestCount())
		})
	}
}

// stateOf returns the state of key's record in the ledger.
func stateOf(t *testing.T, r *rig, key string) idempotency.State {
	t.Helper()
	recs, err := r.store.Lookup(r.ctx, []string{key})
	require.NoError(t, err)
	rec, ok := recs[key]
	require.True(t, ok, "no record for %s", key)
	return rec.State
}

// crashAfterBatchClaimThenRerun kills a batched worker right after its
// batch claim, with env choosing the effect's expiry policy, and reruns it
// past the lease: the batch was claimed as "nothing sent" (claimed, no
// request), and every key is then taken over and sent exactly once.
func crashAfterBatchClaimThenRerun(t *testing.T, env ...string) {
	t.Helper()
	const keys = 12
	r := newRig(t, nil)
	env = append([]string{envBatch + "=1"}, env...)

	w := startWorker(t, r.dsn, r.fake.URL(), keys, 4, 0, crashAfterBatchClaim, "", env...)
	require.Error(t, w.wait())
	require.True(t, w.killedBySIGKILL(), "%s", w.out)
	byState, _ := ledgerCounts(t, r.ctx, r.pool)
	require.Equal(t, map[string]int{"claimed": keys}, byState, "claimed as nothing sent")
	require.Zero(t, r.fake.RequestCount())

	w = startWorker(t, r.dsn, r.fake.URL(), keys, 4, time.Hour, "", "", env...)
	require.NoError(t, w.wait(), "%s", w.out)
	requireAllApplied(t, r.ctx, r.pool, keys) // taken over, not left in doubt
	requireOnePerKey(t, r.fake, keysOf(intents(keys))...)
	require.Equal(t, keys, r.fake.RequestCount(), "one request per intent")
}

// TestBatchCrashAfterClaimUncalledIsTakenOver: an effect that records the
// start of each call (ExpiredRetryUncalled, a provider that ignores keys)
// claims its batch as "nothing sent": a worker killed right after the
// batch claim leaves every key free for the next run past the lease, never
// in doubt, and each key is sent exactly once.
func TestBatchCrashAfterClaimUncalledIsTakenOver(t *testing.T) {
	t.Parallel()
	crashAfterBatchClaimThenRerun(t, envUncalled+"=1")
}

// TestBatchCrashAfterClaimParkedEffectIsNotLeftInDoubt: an effect that
// parks expired claims (ExpiredPark, no Find) has its batch claimed as
// "nothing sent" too, each run marking its own call: a worker killed right
// after the batch claim leaves no key in doubt for an operator, though
// none of them was sent; the next run past the lease sends each once.
func TestBatchCrashAfterClaimParkedEffectIsNotLeftInDoubt(t *testing.T) {
	t.Parallel()
	crashAfterBatchClaimThenRerun(t, envPark+"=1")
}

// TestBatchFourProcessesOneEffectPerKey: 4 worker processes sweep the same
// 200 intents at once, each claiming in batches: every intent is created
// once and requested once (a batch claim of a key another process holds is
// in flight, never a second call). Each worker reports how many batch
// claims it made, so the test fails if the sweeps fell back to claiming
// run by run.
func TestBatchFourProcessesOneEffectPerKey(t *testing.T) {
	t.Parallel()
	const keys = 200
	r, workers := fourProcesses(t, keys, envBatch+"=1")
	// A worker that starts late may find every key done at its pre-flight
	// and claim nothing; together they must have claimed in batches.
	batches := 0
	for _, w := range workers {
		batches += claimBatches(t, w.out.String())
	}
	require.Positive(t, batches, "the sweeps claimed run by run")
	require.Equal(t, keys, r.fake.RequestCount(), "one request per intent across the 4 processes")
	requireOnePerKey(t, r.fake, keysOf(intents(keys))...)
	requireAllApplied(t, r.ctx, r.pool, keys)
}
