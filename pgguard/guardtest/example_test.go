package guardtest_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
)

// The guard production code uses for its loyalty_discounts table.
var discounts = pgguard.Guard{
	Table:          "loyalty_discounts",
	Columns:        []string{"user_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"applied", "skipped"},
	IndexName:      "uq_loyalty_discounts_active",
}

// The team's migration, as its migration tool runs it.
const discountsMigration = `
CREATE TABLE loyalty_discounts (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	user_id    bigint NOT NULL,
	promo_code text   NOT NULL UNIQUE,
	status     text   NOT NULL
);
CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id)
	WHERE status IN ('applied', 'skipped');`

// A team's own test of its table, in a _test.go file of its package: the
// migration runs in a schema of its own on the CI database, then Check
// proves the index does what the guard says.
func Example() {
	testLoyaltyDiscountsGuard := func(t *testing.T) { // func TestLoyaltyDiscountsGuard(t *testing.T)
		db := freshSchema(t, os.Getenv("TEST_DATABASE_URL"))
		var n atomic.Int64
		guardtest.Check(t, db, guardtest.Table{
			Guard: discounts,
			Migrate: func(ctx context.Context, db pgguard.DBTX) error {
				_, err := db.Exec(ctx, discountsMigration)
				return err
			},
			Row: func(key []any, status string) (string, []any) {
				return `INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, $2, $3)`,
					[]any{key[0], fmt.Sprintf("promo_%d", n.Add(1)), status} // a fresh code each time
			},
			Key:            func(i int) []any { return []any{int64(1000 + i)} },
			ExemptStatuses: []string{"revoked", "failed"},
		})
	}
	_ = testLoyaltyDiscountsGuard
}

// freshSchema returns a pool whose connections see only a new, empty
// schema, dropped with everything in it when t ends.
func freshSchema(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	schema := "guardtest_" + strings.ToLower(rand.Text()[:12])
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		_, _ = admin.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		_ = admin.Close(ctx)
	})
	return pool
}
