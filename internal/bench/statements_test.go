package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// TestStatementsPerOutcome pins, deterministically, the round trips the
// benchmarks measure (DESIGN.md, "Round trips to aim for"), counted by
// internal/pgcount on every statement the pool sends.
func TestStatementsPerOutcome(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2)
	// Prepare the statements first: pgcount does not count pgx's
	// Parse/Describe round trip anyway, but a warm connection is what the
	// benchmarks measure.
	_, err := idempotency.Run(f.ctx, f.exec, f.eff, grant{User: 1, Milestone: 1, Percent: 10})
	require.NoError(t, err)

	in := grant{User: 2, Milestone: 1, Percent: 10}
	t.Run("first_time", func(t *testing.T) {
		calls := f.prov.calls.Load()
		var res idempotency.Result[string]
		n, sqls := f.count.Measure(func() { res, err = idempotency.Run(f.ctx, f.exec, f.eff, in) })
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 2, n, "claim and complete: %q", sqls)
		require.Equal(t, int64(1), f.prov.calls.Load()-calls)
	})
	t.Run("already_applied", func(t *testing.T) {
		calls := f.prov.calls.Load()
		var res idempotency.Result[string]
		n, sqls := f.count.Measure(func() { res, err = idempotency.Run(f.ctx, f.exec, f.eff, in) })
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
		require.Equal(t, fakeCode, res.Value, "the stored result comes back")
		require.Equal(t, 1, n, "one claim-or-fetch: %q", sqls)
		require.Zero(t, f.prov.calls.Load()-calls, "no provider call")
	})
	t.Run("seeded_applied", func(t *testing.T) {
		// The benchmarks' set-based seed is what a run would have written.
		seeded := grant{User: 3, Milestone: 1, Percent: 10}
		f.seedApplied(t, []grant{seeded})
		calls := f.prov.calls.Load()
		var res idempotency.Result[string]
		n, _ := f.count.Measure(func() { res, err = idempotency.Run(f.ctx, f.exec, f.eff, seeded) })
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
		require.Equal(t, fakeCode, res.Value)
		require.Equal(t, 1, n)
		require.Zero(t, f.prov.calls.Load()-calls)
	})
	t.Run("handwritten", func(t *testing.T) {
		g := grant{User: 4, Milestone: 1, Percent: 10}
		var called bool
		n, sqls := f.count.Measure(func() { called, err = handwrittenOne(f.ctx, f.pool, f.prov, g) })
		require.NoError(t, err)
		require.True(t, called)
		require.Equal(t, 2, n, "pre-flight SELECT and INSERT: %q", sqls)

		n, _ = f.count.Measure(func() { called, err = handwrittenOne(f.ctx, f.pool, f.prov, g) })
		require.NoError(t, err)
		require.False(t, called, "the pre-flight saw the row")
		require.Equal(t, 1, n)

		// Past the pre-flight, the partial unique index collapses the
		// duplicate (23505 on uq_loyalty_discounts_active).
		_, err = f.pool.Exec(f.ctx, handInsertSQL, g.User, g.Milestone, g.Percent, fakeCode)
		require.Error(t, err)
		require.True(t, pgguard.IsUniqueViolation(err, domainGuard.IndexName), "%v", err)
	})
}

// never is a timer that never fires: the sweep's completions are written
// by size, or when no run can add one, only, so the counts below do not
// depend on the machine's speed.
func never(time.Duration) <-chan time.Time { return nil }

// TestStatementsPerSweep checks the statements of the sweeps the
// benchmarks compare, on 1,000 candidates at concurrency 8:
//
//   - fresh: 1,000 fresh candidates in batches of 500 cost per batch one
//     pre-flight, one claim and one statement of completions: 6 (issue 16:
//     at most 10; one claim per run cost 2,002);
//   - batch (90% already applied): the same 6, whatever is left to do;
//   - per_candidate: one lookup per candidate, then a claim and a
//     completion per missing candidate: 1,200.
func TestStatementsPerSweep(t *testing.T) {
	t.Parallel()
	const n = 1_000
	missing := n * (100 - appliedPercent) / 100
	batches := (n + sweep.DefaultBatchSize - 1) / sweep.DefaultBatchSize

	for _, tc := range []struct {
		mode    string
		applied bool
		want    int
		park    bool // the effect parks expired claims (ExpiredPark)
	}{
		{"fresh", false, 3 * batches, false},
		{"batch", true, 3 * batches, false},
		{"per_candidate", true, n + 2*missing, false},
		// An ExpiredPark effect's batch is claimed as "nothing sent" and
		// each run marks its call: the marks join the groups of changes,
		// so a group goes when all 8 runs holding a place wait in it.
		{"fresh_park", false, 3 * batches, true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, 8)
			f.sweepCfg = func(c *sweep.Config) { c.After = never }
			if tc.park {
				f.eff.Expired, f.eff.DedupWindow = idempotency.ExpiredPark, 0
			}
			run := f.librarySweep
			if tc.mode == "per_candidate" {
				run = f.perCandidateSweep
			}
			all, done := preflightCandidates(1, appliedPercent)
			all = all[:n]
			done = done[:n-missing]
			if !tc.applied {
				done = nil
			}
			f.seedApplied(t, done)
			todo := n - len(done)

			calls := f.prov.calls.Load()
			var got sweepCounts
			var err error
			stmts, sqls := f.count.Measure(func() { got, err = run(all, 8) })
			require.NoError(t, err)
			require.Equal(t, todo, got.Applied)
			require.Equal(t, len(done), got.AlreadyApplied)
			require.Equal(t, todo, got.ProviderCalls)
			require.Equal(t, int64(todo), f.prov.calls.Load()-calls)
			if stmts < 20 {
				t.Logf("%d statements: %q", stmts, firstLines(sqls))
			}
			if !tc.park {
				require.Equal(t, tc.want, stmts, "%s", got)
				return
			}
			// A group holds at most one mark per slot (8), and goes as soon
			// as the 8 runs holding a slot all wait in it; only the tail of
			// a batch, fewer than 8 runs, goes in smaller groups. So the
			// marks cost about one statement per 8 calls, never one per
			// call.
			require.GreaterOrEqual(t, stmts, tc.want+todo/8, "%s", got)
			require.LessOrEqual(t, stmts, tc.want+todo/8+2*8*batches, "%s", got)
			t.Logf("ExpiredPark: %d statements for %d fresh candidates", stmts, todo)
		})
	}
}

func firstLines(sqls []string) []string {
	out := make([]string, len(sqls))
	for i, s := range sqls {
		out[i], _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	}
	return out
}

// TestStatementsWithGroupCommit: 8 concurrent runs through
// idempotency.GroupCommit (MaxBatch 8) cost one claim statement and one
// completion statement, where 8 plain runs cost 16; 8 concurrent repeats
// cost one statement.
func TestStatementsWithGroupCommit(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 8)
	g, err := idempotency.GroupCommit(f.store, &idempotency.GroupCommitConfig{MaxBatch: 8, Window: time.Hour,
		After: func(time.Duration) <-chan time.Time { return nil }})
	require.NoError(t, err)
	x, err := idempotency.NewExecutor(g, nil)
	require.NoError(t, err)
	gs := grants(8, 3)
	var got sweepCounts
	n, sqls := f.count.Measure(func() { got, err = f.libraryRuns(x, gs, 8) })
	require.NoError(t, err)
	require.Equal(t, 8, got.Applied)
	require.Equal(t, 2, n, "one ClaimMany, one TransitionMany: %q", firstLines(sqls))

	n, sqls = f.count.Measure(func() { got, err = f.libraryRuns(x, gs, 8) })
	require.NoError(t, err)
	require.Equal(t, 8, got.AlreadyApplied)
	require.Equal(t, 1, n, "8 repeats, one ClaimMany: %q", firstLines(sqls))

	n, _ = f.count.Measure(func() { got, err = f.libraryRuns(f.exec, grants(8, 4), 8) })
	require.NoError(t, err)
	require.Equal(t, 16, n, "without group commit: a claim and a completion per run")
}

// TestSweepSidesDoTheSameWork checks that the two sides BenchmarkSweep
// compares do the same work: every candidate once, one provider call each,
// one active row each, and nothing on a second pass but pre-flights.
func TestSweepSidesDoTheSameWork(t *testing.T) {
	t.Parallel()
	const n = 300
	f := newFixture(t, 8)
	f.seedHistory(t, 100)
	gs := grants(n, 7)

	lib, err := f.librarySweep(gs, 8)
	require.NoError(t, err)
	hand, err := f.handwrittenSweep(gs, 8)
	require.NoError(t, err)
	for _, got := range []sweepCounts{lib, hand} {
		require.Equal(t, n, got.Applied)
		require.Equal(t, n, got.ProviderCalls)
	}
	var ledger, domain int
	require.NoError(t, f.pool.QueryRow(f.ctx,
		`SELECT count(*) FROM effect_ledger WHERE namespace = $1 AND state = 'applied'`, loyaltyKeys.Namespace).Scan(&ledger))
	require.NoError(t, f.pool.QueryRow(f.ctx,
		`SELECT count(*) FROM loyalty_discounts WHERE milestone = 7 AND status = 'applied'`).Scan(&domain))
	require.Equal(t, n, ledger)
	require.Equal(t, n, domain)

	// A second pass finds everything done and calls nobody.
	calls := f.prov.calls.Load()
	stmts, _ := f.count.Measure(func() { lib, err = f.librarySweep(gs, 8) })
	require.NoError(t, err)
	require.Equal(t, n, lib.AlreadyApplied)
	require.Equal(t, 1, stmts, "one batch, one lookup")
	stmts, _ = f.count.Measure(func() { hand, err = f.handwrittenSweep(gs, 8) })
	require.NoError(t, err)
	require.Equal(t, n, hand.AlreadyApplied)
	require.Equal(t, n, stmts, "one pre-flight per candidate")
	require.Equal(t, calls, f.prov.calls.Load())
}

// TestExecutorAllocations keeps the core executor's allocations per effect
// (MemStore, no driver) within the budget of issue 9: 30.
func TestExecutorAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	const budget = 30
	ctx := context.Background()
	x, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
	require.NoError(t, err)
	eff := loyaltyEffect(&provider{})
	user := int64(0)
	first := testing.AllocsPerRun(200, func() {
		user++
		if _, err := idempotency.Run(ctx, x, eff, grant{User: user, Milestone: 1, Percent: 10}); err != nil {
			t.Fatal(err)
		}
	})
	again := testing.AllocsPerRun(200, func() {
		if _, err := idempotency.Run(ctx, x, eff, grant{User: 1, Milestone: 1, Percent: 10}); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("allocations per effect: first time %.0f, already applied %.0f (budget %d)", first, again, budget)
	require.LessOrEqual(t, first, float64(budget), "first-time run")
	require.LessOrEqual(t, again, float64(budget), "already-applied run")
}

// TestServerVersion logs the server the benchmarks run against; the
// benchmark script records the line with the results.
func TestServerVersion(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	var version string
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT version()`).Scan(&version))
	t.Logf("server: %s", version)
}
