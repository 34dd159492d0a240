package sweep_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/internal/pgtest"
	"github.com/effectonce/effectonce/pgguard"
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

// pgStore returns a migrated pgguard store in the test's own schema, using
// the database clock, and the pool's statement counter.
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
	return markingStore{store}, counter
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
	t.Logf("%s", rep)
}
