package guardtest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// The order of work on a live table that already holds duplicates (the
// incident's users with two active discounts): audit, repair, then build the
// index online with pgguard.CreateIndexConcurrently, which Migrate may call
// on the pool Check is given. Check accepts the index built that way.
func TestPassesAnIndexBuiltByCreateIndexConcurrently(t *testing.T) {
	t.Parallel()
	var built pgguard.IndexResult
	tbl := loyaltyCase()
	tbl.Migrate = func(ctx context.Context, db pgguard.DBTX) error {
		if err := migrate(loyaltyTable,
			`INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES
				(1, 'a', 'applied'), (1, 'b', 'skipped'), (2, 'c', 'applied'), (3, 'd', 'revoked'), (3, 'e', 'applied')`)(ctx, db); err != nil {
			return err
		}
		// Refused while the duplicates remain.
		if _, err := pgguard.CreateIndexConcurrently(ctx, db, loyalty); !errors.Is(err, pgguard.ErrDuplicates) {
			return fmt.Errorf("want ErrDuplicates, got %v", err)
		}
		groups, err := pgguard.Audit(ctx, db, loyalty, nil)
		if err != nil {
			return err
		}
		for _, g := range groups {
			for _, r := range g.Rows[1:] { // keep the oldest
				if _, err := db.Exec(ctx, `UPDATE loyalty_discounts SET status = 'revoked' WHERE id = $1`, r["id"]); err != nil {
					return err
				}
			}
		}
		built, err = pgguard.CreateIndexConcurrently(ctx, db, loyalty)
		return err
	}
	requirePasses(t, pgtest.Pool(t), tbl)
	require.Equal(t, pgguard.IndexResult{Created: true}, built)
}

// An invalid index left by a failed build is dropped and rebuilt, and Check
// accepts the result.
func TestPassesAnInvalidIndexRebuiltByCreateIndexConcurrently(t *testing.T) {
	t.Parallel()
	var built pgguard.IndexResult
	tbl := loyaltyCase()
	tbl.Migrate = func(ctx context.Context, db pgguard.DBTX) error {
		// A build that fails on a duplicate committed before it, which is
		// then revoked: the invalid index stays.
		if err := migrate(loyaltyTable,
			`INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES (1, 'a', 'applied'), (1, 'b', 'applied')`)(ctx, db); err != nil {
			return err
		}
		if _, err := db.Exec(ctx, `CREATE UNIQUE INDEX CONCURRENTLY uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE status IN ('applied', 'skipped')`); err == nil {
			return errors.New("CREATE INDEX CONCURRENTLY over duplicates succeeded")
		}
		if _, err := db.Exec(ctx, `UPDATE loyalty_discounts SET status = 'revoked' WHERE promo_code = 'b'`); err != nil {
			return err
		}
		var err error
		built, err = pgguard.CreateIndexConcurrently(ctx, db, loyalty)
		return err
	}
	requirePasses(t, pgtest.Pool(t), tbl)
	require.Equal(t, pgguard.IndexResult{Created: true, DroppedInvalid: true}, built)
}
