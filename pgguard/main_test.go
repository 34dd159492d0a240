package pgguard_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// bundle is what most tests start from: a migrated ledger in the test's own
// schema, a store on a fake clock, and the pool.
type bundle struct {
	ctx    context.Context
	pool   *pgxpool.Pool
	schema string // the test's schema (the pool's search_path)
	store  *pgguard.Store
	clock  *clocktest.Clock
}

type setupOpts struct {
	configure func(*pgxpool.Config)
	cfg       *pgguard.Config // Now is filled in with the fake clock
}

func setup(t *testing.T, o *setupOpts) *bundle {
	t.Helper()
	if o == nil {
		o = &setupOpts{}
	}
	var schema string
	pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) {
		schema = c.ConnConfig.RuntimeParams["search_path"]
		if o.configure != nil {
			o.configure(c)
		}
	})
	ctx := context.Background()
	clock := clocktest.New()
	cfg := pgguard.Config{}
	if o.cfg != nil {
		cfg = *o.cfg
	}
	cfg.Now = clock.Now
	require.NoError(t, pgguard.Migrate(ctx, pool, &cfg))
	store, err := pgguard.New(pool, &cfg)
	require.NoError(t, err)
	return &bundle{ctx: ctx, pool: pool, schema: schema, store: store, clock: clock}
}

func claimReq(key string) idempotency.ClaimRequest {
	return idempotency.ClaimRequest{Key: key, Namespace: "test", Fingerprint: []byte("fp"), Lease: time.Minute}
}

// execModes are every pgx query execution mode, as pgxtest.RunWithQueryExecModes
// runs them. Services behind PgBouncer (transaction pooling) use the simple
// protocol, so the SQL must work there too.
var execModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

// waitForLockWaiters polls until n backends of the test's schema are waiting
// on a lock, so that a test releases a blocker only once its competitors
// really are blocked on it.
func waitForLockWaiters(t *testing.T, b *bundle, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		var got int
		err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = $1 AND wait_event_type = 'Lock'`, b.schema).Scan(&got)
		return err == nil && got >= n
	}, 10*time.Second, 5*time.Millisecond, "waiting for %d blocked backends", n)
}
