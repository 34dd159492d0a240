package sweep_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// inLookup marks the context of a Store.Lookup, so the tracer can tell the
// statements a lookup sends from the others.
type inLookup struct{}

// statementCounter is a pgx QueryTracer counting the statements sent, all
// of them and those sent by Lookup.
type statementCounter struct {
	all, lookup atomic.Int64
}

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.all.Add(1)
	if ctx.Value(inLookup{}) != nil {
		c.lookup.Add(1)
	}
	return ctx
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// markingStore marks the context of every Lookup for statementCounter.
type markingStore struct{ idempotency.Store }

func (s markingStore) Lookup(ctx context.Context, keys []string) (map[string]idempotency.Record, error) {
	return s.Store.Lookup(context.WithValue(ctx, inLookup{}, true), keys)
}

// markingBatchStore is markingStore over a batch store, keeping its batch
// capability.
type markingBatchStore struct {
	markingStore
	bs idempotency.BatchStore
}

func (s markingBatchStore) ClaimMany(ctx context.Context, reqs []idempotency.ClaimRequest) ([]idempotency.Claim, error) {
	return s.bs.ClaimMany(ctx, reqs)
}

func (s markingBatchStore) TransitionMany(ctx context.Context, cs []idempotency.Change) ([]idempotency.TransitionResult, error) {
	return s.bs.TransitionMany(ctx, cs)
}

// pgStore returns a migrated pgguard store in the test's own schema, using
// the database clock, and the pool's statement counter. The store claims
// in batches; wrap it in markingStore alone for one claim per run.
func pgStore(t *testing.T) (idempotency.Store, *statementCounter) {
	t.Helper()
	counter := &statementCounter{}
	pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) {
		c.ConnConfig.Tracer = counter
		// Thousands of one-statement transactions: do not wait for each
		// WAL flush. Crash durability is not what these tests are about.
		c.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	})
	ctx := context.Background()
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	store, err := pgguard.New(pool, nil)
	require.NoError(t, err)
	return markingBatchStore{markingStore{store}, store}, counter
}

func TestPostgresPreflightMakesOneLookupStatementPerBatch(t *testing.T) {
	t.Parallel()
	store, counter := pgStore(t)
	var before, lookupsBefore int64
	rep := preflightScenario(t, store, func() {
		before, lookupsBefore = counter.all.Load(), counter.lookup.Load()
	})

	lookupStatements := counter.lookup.Load() - lookupsBefore
	maxLookups := int64((bigSweep + bigBatch - 1) / bigBatch)
	require.LessOrEqual(t, lookupStatements, maxLookups, "one lookup statement per batch")
	require.Equal(t, int64(rep.Lookups), lookupStatements, "one statement per Lookup call")
	t.Logf("measured sweep: %d statements in all, %d of them lookups", counter.all.Load()-before, lookupStatements)
}

func TestPostgresCancelLeavesEveryKeyAppliedOrReleased(t *testing.T) {
	t.Parallel()
	store, _ := pgStore(t)
	rep := cancelScenario(t, store, 1_000, 130)
	require.Positive(t, rep.ClaimBatches)
	t.Logf("%s", rep)
}

func TestPostgresCancelOneClaimPerRunLeavesEveryKeyAppliedOrReleased(t *testing.T) {
	t.Parallel()
	store, _ := pgStore(t)
	rep := cancelScenario(t, store.(markingBatchStore).markingStore, 1_000, 130)
	require.Zero(t, rep.ClaimBatches)
	t.Logf("%s", rep)
}

// TestPostgresBatchSweepStatements: 1,000 fresh candidates in batches of
// 500 cost, per batch, one pre-flight, one claim and one statement of
// completions: 6 statements, where one claim per run costs 2,002 (an
// effect whose provider deduplicates; TestBatchSweepOfAParkingEffect-
// MarksCallsInGroups has the cost of one that parks).
func TestPostgresBatchSweepStatements(t *testing.T) {
	t.Parallel()
	store, counter := pgStore(t)
	p := newProvider()
	before := counter.all.Load()
	rep, err := sweep.Run(context.Background(), newExecutor(t, store), p.dedupEffect(), sweep.Slice(promos(0, 1000)),
		&sweep.Config{BatchSize: 500, Concurrency: 8, After: never})
	require.NoError(t, err)
	require.Equal(t, 1000, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, int64(6), counter.all.Load()-before, "%s", rep)
	calls, created := p.stats()
	require.Equal(t, 1000, calls)
	require.Equal(t, 1000, created)
}
