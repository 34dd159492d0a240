package proof

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// TestFourProcessesEightGoroutinesOneEffectPerKey: 4 OS processes, each a
// sweep with 8 goroutines over the same 200 intents, against one
// PostgreSQL and one fake Stripe over loopback HTTP.
func TestFourProcessesEightGoroutinesOneEffectPerKey(t *testing.T) {
	t.Parallel()
	const keys = 200
	r, workers := fourProcesses(t, keys)
	for i, w := range workers {
		require.Zero(t, claimBatches(t, w.out.String()), "worker %d claims run by run:\n%s", i, w.out)
	}
	requireOnePerKey(t, r.fake, keysOf(intents(keys))...)
	requireAllApplied(t, r.ctx, r.pool, keys)
	t.Logf("4 processes x 8 goroutines over %d keys: %d objects, %d POSTs reached Stripe; worker reports:\n%s%s%s%s",
		keys, r.fake.Created(stripefake.KindPromotionCode), r.fake.RequestCount(),
		workers[0].out, workers[1].out, workers[2].out, workers[3].out)
}

// fourProcesses starts 4 worker processes, each sweeping the same keys
// intents with 8 goroutines (env is added to each worker's environment),
// waits for all of them and requires that each succeeded.
func fourProcesses(t *testing.T, keys int, env ...string) (*rig, []*worker) {
	t.Helper()
	const procs, conc = 4, 8
	r := newRig(t, nil)
	workers := make([]*worker, procs)
	for i := range procs {
		workers[i] = startWorker(t, r.dsn, r.fake.URL(), keys, conc, 0, "", "", env...)
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
	return r, workers
}

// claimBatches reads the number of batch claims a worker reported.
func claimBatches(t *testing.T, out string) int {
	t.Helper()
	m := regexp.MustCompile(`proof worker: claim batches (\d+)`).FindStringSubmatch(out)
	require.NotNil(t, m, "the worker did not report its batch claims:\n%s", out)
	n, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return n
}

// TestCrashAtEveryBoundaryThenRerun kills a worker process with SIGKILL at
// each step boundary of one effect, then runs again with the ledger clock
// past the lease: one object per key, every row applied, none pending.
func TestCrashAtEveryBoundaryThenRerun(t *testing.T) {
	t.Parallel()
	for _, point := range []string{crashAfterClaim, crashAwaitingResponse, crashAfterResponse, crashDuringCompletion} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			const keys = 5
			ctx := context.Background()
			dsn := pgtest.ConnString(t)
			pool := poolFor(t, dsn)
			require.NoError(t, pgguard.Migrate(ctx, pool, nil))
			fake := newFake(t)
			crashAt := intents(keys)[2].ID

			var release chan struct{}
			if point == crashAwaitingResponse {
				// Stripe creates the object, then holds the response until
				// the test has killed the worker.
				release = make(chan struct{})
				fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultDelayAfterWrite, Path: "/v1/promotion_codes",
					Key: keyOf(crashAt), Release: release})
			}
			w := startWorker(t, dsn, fake.URL(), keys, 1, 0, point, crashAt)
			if point == crashAwaitingResponse {
				require.Eventually(t, func() bool { return fake.InFlight() == 1 && fake.Created(stripefake.KindPromotionCode) == 3 },
					30*time.Second, 5*time.Millisecond, "the crashing request never reached Stripe:\n%s", w.out)
				require.NoError(t, w.cmd.Process.Kill()) // SIGKILL
			}
			err := w.wait()
			require.Error(t, err)
			require.True(t, w.killedBySIGKILL(), "worker must die of SIGKILL at %s:\n%s", point, w.out)
			if release != nil {
				close(release)
				require.Eventually(t, func() bool { return fake.InFlight() == 0 }, 10*time.Second, 5*time.Millisecond)
			}

			byStatus, _ := ledgerCounts(t, ctx, pool)
			require.Equal(t, 2, byStatus["applied"], "intents before the crash are applied")
			require.Equal(t, 1, byStatus["calling"], "the crashed intent is held, its call may have started")

			// An immediate rerun respects the dead worker's live lease.
			w = startWorker(t, dsn, fake.URL(), keys, 1, 0, "", "")
			require.NoError(t, w.wait(), "%s", w.out)
			byStatus, _ = ledgerCounts(t, ctx, pool)
			require.Equal(t, 1, byStatus["calling"], "a live lease is in flight, not taken over:\n%s", w.out)

			// Past the lease: taken over under the same key.
			w = startWorker(t, dsn, fake.URL(), keys, 1, time.Hour, "", "")
			require.NoError(t, w.wait(), "%s", w.out)

			require.Equal(t, keys, fake.Created(stripefake.KindPromotionCode), "one object per key after %s", point)
			byStatus, bad := ledgerCounts(t, ctx, pool)
			require.Equal(t, map[string]int{"applied": keys}, byStatus, "no row pending past its lease")
			require.Zero(t, bad)
			reqs := fake.Requests(keyOf(crashAt))
			want := 2
			if point == crashAfterClaim {
				want = 1 // the crashed worker never called
			}
			require.Len(t, reqs, want, "requests under the crashed key: %+v", reqs)
			if want == 2 {
				require.True(t, reqs[1].Replayed, "the takeover's call is a replay of the first")
			}
			t.Logf("%s: %d objects for %d keys; crashed key saw %d request(s)", point, fake.Created(stripefake.KindPromotionCode), keys, len(reqs))
		})
	}
}

// TestKilledWhileWaitingForARateLimitTokenLeavesTheKeyFree: a sweep's rate
// limiter makes an attempt wait before the call is marked as started. A
// worker killed during that wait leaves a record that says nothing was
// sent (claimed), so the next run past the lease takes it over, even under
// ExpiredRetryUncalled (a provider that ignores keys), instead of leaving
// it in doubt for an operator.
func TestKilledWhileWaitingForARateLimitTokenLeavesTheKeyFree(t *testing.T) {
	t.Parallel()
	const keys = 3
	ctx := context.Background()
	dsn := pgtest.ConnString(t)
	pool := poolFor(t, dsn)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	fake := newFake(t)
	uncalled := envUncalled + "=1"
	w := startWorker(t, dsn, fake.URL(), keys, 1, 0, crashWaitingForToken, "", uncalled)
	// The first intent takes the only token; the second waits for one.
	require.Eventually(t, func() bool { return strings.Count(w.out.String(), "waiting for a token") >= 2 },
		30*time.Second, 5*time.Millisecond, "the worker never waited:\n%s", w.out)
	require.NoError(t, w.cmd.Process.Kill())
	require.Error(t, w.wait())
	require.True(t, w.killedBySIGKILL(), "%s", w.out)

	byState, _ := ledgerCounts(t, ctx, pool)
	require.Equal(t, map[string]int{"applied": 1, "claimed": 1}, byState, "the waiting run had not marked its call")
	require.Equal(t, 1, fake.RequestCount(), "nothing was sent for the waiting intent")

	w = startWorker(t, dsn, fake.URL(), keys, 1, time.Hour, "", "", uncalled)
	require.NoError(t, w.wait(), "%s", w.out)
	byState, bad := ledgerCounts(t, ctx, pool)
	require.Equal(t, map[string]int{"applied": keys}, byState, "taken over past the lease, not left in doubt:\n%s", w.out)
	require.Zero(t, bad)
	require.Equal(t, keys, fake.Created(stripefake.KindPromotionCode))
	require.Equal(t, keys, fake.RequestCount(), "one request per intent")
}

func keyOf(id string) string {
	return promoKeys.MustKey(idempotency.Str("intent", id)).String()
}

// poolFor opens a pool on a DSN from pgtest.ConnString (its schema is in
// the DSN), closed when the test ends.
func poolFor(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}
