package proof

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// Database faults under a running effect: the worker's connections killed
// mid-sweep, statements timing out behind another transaction's lock during
// the claim and during the completion.

// statementTimeout is the statement_timeout of the one statement under test
// in the timeout tests. That statement waits behind another transaction's
// lock, which outlives it, so only the timeout can end it; no other
// statement runs under it (a pool-wide timeout once cancelled Migrate on a
// loaded CI machine).
const statementTimeout = 400 * time.Millisecond

// timedExec returns an executor over the rig's ledger on a connection of
// its own, and arm, which sets statementTimeout on that connection. Arm it
// just before the statement under test: what ran before on the connection
// ran without a timeout. The connection is closed when the test ends.
func (r *rig) timedExec() (x *idempotency.Executor, arm func()) {
	r.t.Helper()
	conn, err := r.pool.Acquire(r.ctx)
	require.NoError(r.t, err)
	r.t.Cleanup(func() { _ = conn.Hijack().Close(context.Background()) })
	s, err := r.store.WithDB(conn)
	require.NoError(r.t, err)
	x, err = idempotency.NewExecutor(s, nil)
	require.NoError(r.t, err)
	return x, func() {
		_, err := conn.Exec(r.ctx, fmt.Sprintf("SET statement_timeout = %d", statementTimeout.Milliseconds()))
		require.NoError(r.t, err)
	}
}

// requireAllApplied reads the whole ledger back: exactly n rows, all
// applied with a result, none pending, failed or parked.
func requireAllApplied(t *testing.T, ctx context.Context, pool *pgxpool.Pool, n int) {
	t.Helper()
	byStatus, bad := ledgerCounts(t, ctx, pool)
	require.Equal(t, map[string]int{"applied": n}, byStatus)
	require.Zero(t, bad, "applied rows without a result")
}

func keysOf(ins []intent) []string {
	out := make([]string, len(ins))
	for i, in := range ins {
		out[i] = keyOf(in.ID)
	}
	return out
}

// TestDBConnectionTerminatedMidSweep: a sweep of 40 intents, 4 at a time;
// when the 10th POST reaches Stripe, every backend of the worker's pool is
// killed with pg_terminate_backend (found by the pool's application_name).
// Runs in the middle of a claim or a completion fail; runs whose completion
// was lost leave a pending row under a live lease. Reruns with the ledger
// clock past the lease (same pool, which reconnects by itself) finish the
// job: 40 objects, 40 applied rows, exactly one executed request per key.
func TestDBConnectionTerminatedMidSweep(t *testing.T) {
	t.Parallel()
	const n, conc, killAt = 40, 4, 10
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	app := "proof_worker_" + hex.EncodeToString(suffix[:])
	r := newRig(t, func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["application_name"] = app
		c.MaxConns = 8
		// pgxpool pings a connection idle for over a second before
		// handing it out and quietly replaces a killed one. Whether a
		// killed connection idles that long depends on the machine's
		// speed, so never ping: each killed connection fails the one
		// statement that meets it, and the kill always hits a run.
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	admin := pgtest.AdminPool(t)

	var posts, killed atomic.Int64
	var killErr error
	var killOnce sync.Once
	r.fake.OnRequest(func(rec stripefake.RequestRecord) {
		if rec.Path != promoPath || posts.Add(1) != killAt {
			return
		}
		killOnce.Do(func() {
			var k int64
			killErr = admin.QueryRow(r.ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
				FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&k)
			killed.Store(k)
		})
	})

	all := intents(n)
	eff := r.effect(attempts(1), 0)
	rep, err := sweep.Run(r.ctx, r.exec, eff, sweep.Slice(all), &sweep.Config{Concurrency: conc})
	require.NoError(t, err, "the pre-flight ran before the kill; the sweep itself goes on")
	require.NoError(t, killErr)
	require.GreaterOrEqual(t, killed.Load(), int64(1), "backends of the worker pool terminated")
	require.NotEmpty(t, rep.Failures, "the kill must have hit a statement: %s", rep.String())
	for _, f := range rep.Failures {
		require.Equal(t, idempotency.OutcomeError, f.Outcome, "only store errors: %v", f)
	}
	first := rep.String()

	// The next tick comes minutes later, by when pgxpool has replaced the
	// killed connections (it pings those idle over a second before use,
	// which this pool does not); Reset stands for that wait, so no rerun
	// trips on a dead connection.
	r.pool.Reset()

	// Reruns (the next ticks), each with the ledger clock past the lease.
	var reruns []string
	for i := 0; i < 4; i++ {
		byStatus, _ := ledgerCounts(t, r.ctx, r.pool)
		if byStatus["applied"] == n {
			break
		}
		r.clock.Advance(10 * time.Minute)
		rep, err = sweep.Run(r.ctx, r.exec, eff, sweep.Slice(all), &sweep.Config{Concurrency: conc})
		require.NoError(t, err)
		reruns = append(reruns, rep.String())
	}
	requireAllApplied(t, r.ctx, r.pool, n)
	total := requireOnePerKey(t, r.fake, keysOf(all)...)
	for _, in := range all {
		r.requireApplied(keyOf(in.ID))
	}
	t.Logf("%d backends killed at POST %d: first sweep %s; reruns %q; %d objects for %d intents, %d POSTs",
		killed.Load(), killAt, first, reruns, r.fake.Created(stripefake.KindPromotionCode), n, total)
}

// lockRow holds key's ledger row with SELECT ... FOR UPDATE in a
// transaction of its own (another pool) until the returned function is
// called.
func lockRow(t *testing.T, ctx context.Context, pool *pgxpool.Pool, key string) (unlock func()) {
	t.Helper()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	var one int
	require.NoError(t, tx.QueryRow(ctx, `SELECT 1 FROM `+pgguard.DefaultTable+` WHERE key = $1 FOR UPDATE`, key).Scan(&one))
	var once sync.Once
	unlock = func() { once.Do(func() { _ = tx.Rollback(ctx) }) }
	t.Cleanup(unlock)
	return unlock
}

// TestDBStatementTimeoutDuringClaim: the claim runs with statement_timeout
// 400ms; another transaction holds the ledger so that the claim waits and
// is cancelled by the server (SQLSTATE 57014). Nothing is called at
// Stripe, nothing is half-written; after the lock is gone the next run
// applies the effect once.
func TestDBStatementTimeoutDuringClaim(t *testing.T) {
	t.Parallel()

	// A worker claimed the key and died before calling Stripe; its lease
	// has expired. The takeover needs the row lock, which an operator's
	// transaction holds.
	t.Run("takeover_blocked_by_row_lock", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		locker := poolWith(t, r.dsn, nil)
		in := intent{ID: "iclaimrow", Customer: "cus_claimrow"}
		key := keyOf(in.ID)
		eff := r.effect(attempts(1), 0)
		_, fp, err := eff.Identity(in)
		require.NoError(t, err)
		dead, err := r.store.Claim(r.ctx, idempotency.ClaimRequest{Key: key, Namespace: promoKeys.Namespace,
			Fingerprint: fp, Lease: 5 * time.Minute})
		require.NoError(t, err)
		require.True(t, dead.Verdict.Holds())
		r.clock.Advance(10 * time.Minute)

		unlock := lockRow(t, r.ctx, locker, key)
		timed, arm := r.timedExec()
		arm()
		start := time.Now()
		res, err := idempotency.Run(r.ctx, timed, eff, in)
		requirePgCode(t, err, pgerrcode.QueryCanceled)
		require.GreaterOrEqual(t, time.Since(start), statementTimeout)
		require.Equal(t, idempotency.OutcomeError, res.Outcome)
		require.Zero(t, res.Calls)
		require.Empty(t, r.fake.Requests(key), "nothing reached Stripe")
		lr := r.row(key)
		require.Equal(t, dead.Record.Token, lr.Token, "the row is untouched")
		require.Equal(t, 1, lr.Claims)

		unlock()
		res, err = r.run(eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		posts := requireOnePerKey(t, r.fake, key)
		require.Equal(t, 2, r.requireApplied(key).Claims)
		t.Logf("claim timed out behind a row lock: 0 calls; after unlock 1 object, %d POST", posts)
	})

	// A first claim: the table is locked against writes (EXCLUSIVE mode
	// lets the claim's read through and blocks its insert).
	t.Run("first_claim_blocked_by_table_lock", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, nil)
		locker := poolWith(t, r.dsn, nil)
		in := intent{ID: "iclaimtbl", Customer: "cus_claimtbl"}
		key := keyOf(in.ID)
		eff := r.effect(attempts(1), 0)

		tx, err := locker.Begin(r.ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(r.ctx) }()
		_, err = tx.Exec(r.ctx, `LOCK TABLE `+pgguard.DefaultTable+` IN EXCLUSIVE MODE`)
		require.NoError(t, err)
		timed, arm := r.timedExec()
		arm()
		res, err := idempotency.Run(r.ctx, timed, eff, in)
		requirePgCode(t, err, pgerrcode.QueryCanceled)
		require.Equal(t, idempotency.OutcomeError, res.Outcome)
		require.Zero(t, res.Calls)
		require.Empty(t, r.fake.Requests(key))
		require.NoError(t, tx.Rollback(r.ctx))
		require.Zero(t, r.tableRows(), "no row half-written")

		res, err = r.run(eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		requireOnePerKey(t, r.fake, key)
		require.Equal(t, 1, r.requireApplied(key).Claims)
	})
}

// TestDBStatementTimeoutDuringCompletion: Stripe has created the code; an
// operator's transaction locks the ledger row just before the completion,
// which times out (57014). The row stays pending under the worker's live
// lease: an immediate rerun is in flight and calls nothing; a rerun past
// the lease takes over, Stripe replays, and the row is applied. One code.
func TestDBStatementTimeoutDuringCompletion(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	locker := poolWith(t, r.dsn, nil)
	in := intent{ID: "icomplete", Customer: "cus_complete"}
	key := keyOf(in.ID)

	eff := r.effect(attempts(1), 0)
	call := eff.Call
	var unlock func()
	timed, arm := r.timedExec()
	eff.Call = func(ctx context.Context, k idempotency.Key, in intent) (promoResult, error) {
		out, err := call(ctx, k, in)
		unlock = lockRow(t, r.ctx, locker, k.String()) // between the answer and the record
		arm()                                          // for the completion only, not the claim
		return out, err
	}
	start := time.Now()
	res, err := idempotency.Run(r.ctx, timed, eff, in)
	requirePgCode(t, err, pgerrcode.QueryCanceled)
	require.GreaterOrEqual(t, time.Since(start), statementTimeout)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	require.Equal(t, 1, res.Calls)
	require.Equal(t, 1, r.fake.Created(stripefake.KindPromotionCode))
	unlock()
	lr := r.row(key)
	require.Equal(t, "calling", lr.State)
	require.True(t, lr.Leased, "the worker's lease still runs")
	require.Nil(t, lr.Result)

	next := r.effect(attempts(1), 0)
	res, err = r.run(next, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeInFlight, res.Outcome, "a live lease is respected")
	require.Zero(t, res.Calls)

	r.clock.Advance(10 * time.Minute)
	res, err = r.run(next, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.True(t, res.Value.Replayed)
	require.Equal(t, []string{"200 executed", "200 replayed"}, requestSummary(r.fake, key))
	posts := requireOnePerKey(t, r.fake, key)
	require.Equal(t, 2, r.requireApplied(key).Claims)
	t.Logf("completion timed out behind a row lock: rerun in flight (0 calls), past the lease replayed; 1 object, %d POSTs", posts)
}
