package pgguard_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/storetest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// TestConformance runs the store conformance suite against real PostgreSQL
// in every query execution mode, with the default (search_path) table, and
// with an explicitly qualified table whose schema and table names need
// quoting while the connection's search_path points elsewhere, so that an
// unqualified or unquoted name anywhere in the SQL fails loudly.
func TestConformance(t *testing.T) {
	t.Parallel()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			storetest.Run(t, func(t *testing.T, now func() time.Time) idempotency.Store {
				pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) {
					c.ConnConfig.DefaultQueryExecMode = mode
					c.MaxConns = 4 // many suites run at once; 4 still lets 32 goroutines contend
				})
				cfg := &pgguard.Config{Now: now}
				require.NoError(t, pgguard.Migrate(context.Background(), pool, cfg))
				s, err := pgguard.New(pool, cfg)
				require.NoError(t, err)
				return s
			})
		})
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		t.Run("QuotedNames/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			storetest.Run(t, func(t *testing.T, now func() time.Time) idempotency.Store {
				var schema string
				pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) {
					c.ConnConfig.DefaultQueryExecMode = mode
					c.MaxConns = 4
					schema = c.ConnConfig.RuntimeParams["search_path"]
					c.ConnConfig.RuntimeParams["search_path"] = "pg_catalog"
				})
				ctx := context.Background()
				odd := `"Odd" sch\ema ` + schema[len(schema)-16:]
				_, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{odd}.Sanitize())
				require.NoError(t, err)
				t.Cleanup(func() {
					_, _ = pgtest.AdminPool(t).Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{odd}.Sanitize()+" CASCADE")
				})
				cfg := &pgguard.Config{Schema: odd, Table: `Effect "Ledger" it's`, Now: now}
				require.NoError(t, pgguard.Migrate(ctx, pool, cfg))
				s, err := pgguard.New(pool, cfg)
				require.NoError(t, err)
				return s
			})
		})
	}
}
