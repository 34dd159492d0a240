package sweep_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

// The scenarios below run against every store: the in-memory one here and
// the Postgres one in pg_test.go.

const (
	bigSweep   = 10_000
	bigApplied = 9_000
	bigBatch   = 500
)

// preflightScenario sweeps 10,000 candidates of which 9,000 were applied by
// an earlier sweep, through a counting decorator over base. beforeMeasured,
// when set, is called between the two sweeps.
func preflightScenario(t *testing.T, base idempotency.Store, beforeMeasured func()) sweep.Report {
	t.Helper()
	ctx := context.Background()
	all := promos(0, bigSweep)

	// An earlier tick did the first 9,000.
	earlier := newProvider()
	rep, err := sweep.Run(ctx, newExecutor(t, base), earlier.effect(), sweep.Slice(all[:bigApplied]), &sweep.Config{Concurrency: 16})
	require.NoError(t, err)
	require.Equal(t, bigApplied, rep.Outcomes[idempotency.OutcomeApplied])

	if beforeMeasured != nil {
		beforeMeasured()
	}
	store, counting := counting(base)
	p := newProvider()
	rep, err = sweep.Run(ctx, newExecutor(t, store), p.effect(), sweep.Slice(all), &sweep.Config{BatchSize: bigBatch})
	require.NoError(t, err)
	requireAccounted(t, rep)

	maxLookups := (bigSweep + bigBatch - 1) / bigBatch
	require.LessOrEqual(t, int(counting.lookups.Load()), maxLookups, "one lookup per batch, never per candidate")
	require.Equal(t, rep.Lookups, int(counting.lookups.Load()))
	calls, created := p.stats()
	require.Equal(t, bigSweep-bigApplied, calls, "only the 1,000 new candidates reach the provider")
	require.Equal(t, bigSweep-bigApplied, created)
	require.Equal(t, calls, rep.ProviderCalls)
	require.Equal(t, bigSweep-bigApplied, int(counting.claims.Load()), "applied candidates are not even claimed")
	require.Equal(t, bigSweep, rep.Candidates)
	require.Equal(t, bigApplied, rep.SavedByPreflight)
	require.Equal(t, map[idempotency.Outcome]int{
		idempotency.OutcomeApplied:        bigSweep - bigApplied,
		idempotency.OutcomeAlreadyApplied: bigApplied,
	}, rep.Outcomes)
	require.Empty(t, rep.Failures)
	t.Logf("%s", rep)
	return rep
}

// cancelScenario cancels a sweep of n candidates once the provider has
// been called cancelAt times, and checks that every key the sweep touched
// is applied or released, and that every applied key was really created.
func cancelScenario(t *testing.T, base idempotency.Store, n, cancelAt int) sweep.Report {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	items := promos(0, n)
	p := newProvider()
	p.before = func(ctx context.Context, call int, _ promo) error {
		if call == cancelAt {
			cancel() // this call still completes: the effect happened
		} else if call > cancelAt {
			// Calls racing with the cancel fail before sending, as a
			// provider client does when its context is done before the
			// request is written: it says the provider did not act (an
			// unclassified error would leave the record in doubt).
			if err := ctx.Err(); err != nil {
				return idempotency.NotActed(err, 0)
			}
		}
		return nil
	}
	eff := p.effect()
	rep, err := sweep.Run(ctx, newExecutor(t, base), eff, sweep.Slice(items), &sweep.Config{BatchSize: 50, Concurrency: 8})
	require.ErrorIs(t, err, context.Canceled)
	requireAccounted(t, rep)
	require.Less(t, rep.Candidates-rep.Unstarted, n, "a cancelled sweep stops taking candidates")

	applied := requireAppliedOrReleased(t, base, eff, items)
	_, created := p.stats()
	require.Equal(t, created, applied, "every effect that happened is recorded, and only those")
	require.Equal(t, applied, rep.Outcomes[idempotency.OutcomeApplied])

	// The next tick finishes the job, calling only for what is missing.
	next := newProvider()
	rep2, err := sweep.Run(context.Background(), newExecutor(t, base), next.effect(), sweep.Slice(items), nil)
	require.NoError(t, err)
	require.Equal(t, n-applied, rep2.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, applied, rep2.Outcomes[idempotency.OutcomeAlreadyApplied])
	calls, _ := next.stats()
	require.Equal(t, n-applied, calls)
	return rep
}
