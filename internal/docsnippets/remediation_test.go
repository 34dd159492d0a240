package docsnippets_test

// The sources of docs/remediation.md's Go blocks, run on PostgreSQL: a
// table with duplicates is audited, repaired, indexed online and checked.

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
)

func remediationGuard() pgguard.Guard {
	// snippet:remediation-guard
	guard := pgguard.Guard{
		Table:          "loyalty_discounts",
		Columns:        []string{"user_id"},
		StatusColumn:   "status",
		ActiveStatuses: []string{"applied", "skipped"},
		IndexName:      "uq_loyalty_discounts_active",
	}
	// end snippet
	return guard
}

// remediationTable is loyalty_discounts before its index existed.
const remediationTable = `
CREATE TABLE loyalty_discounts (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	user_id    bigint NOT NULL,
	promo_code text   NOT NULL UNIQUE,
	status     text   NOT NULL,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);`

func remediate(ctx context.Context, db *pgxpool.Pool, guard pgguard.Guard) error {
	// snippet:remediation-audit
	groups, err := pgguard.Audit(ctx, db, guard, &pgguard.AuditOptions{
		OrderBy: []string{"created_at", "id"}, // oldest first
		Columns: []string{"id", "promo_code", "created_at"},
	})
	if err != nil {
		return err // *pgguard.CatalogError if the guard names what the table lacks
	}
	for _, g := range groups {
		keep, others := g.Rows[0], g.Rows[1:]
		fmt.Printf("user %v: keep %v, revoke %d\n", g.Key[0], keep["promo_code"], len(others))
	}
	// end snippet

	// snippet:remediation-repair
	for _, g := range groups {
		for _, r := range g.Rows[1:] {
			if _, err := db.Exec(ctx, `UPDATE loyalty_discounts SET status = 'revoked'
				WHERE id = $1 AND status IN ('applied', 'skipped')`, r["id"]); err != nil {
				return err
			}
		}
	}
	// end snippet

	// snippet:remediation-index
	res, err := pgguard.CreateIndexConcurrently(ctx, db, guard) // a pool, never a pgx.Tx
	var dup *pgguard.DuplicatesError
	switch {
	case errors.As(err, &dup):
		// New duplicates since the repair: no index was left behind.
		// Repair dup.Groups and run again.
		return fmt.Errorf("%d keys have duplicates again: %w", len(dup.Groups), err)
	case err != nil:
		return err
	default:
		fmt.Println("created:", res.Created, "dropped an invalid one:", res.DroppedInvalid)
	}
	// end snippet
	return nil
}

func TestRemediationAuditsRepairsAndIndexes(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	_, err := pool.Exec(ctx, remediationTable+`
		INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES
			(1, 'A1', 'applied'), (1, 'A2', 'applied'), (1, 'A3', 'skipped'),
			(2, 'B1', 'applied'), (2, 'B2', 'revoked'),
			(3, 'C1', 'applied'), (3, 'C2', 'applied')`)
	require.NoError(t, err)
	guard := remediationGuard()

	require.NoError(t, remediate(ctx, pool, guard))

	var active []string
	rows, err := pool.Query(ctx, `SELECT promo_code FROM loyalty_discounts WHERE status <> 'revoked' ORDER BY promo_code`)
	require.NoError(t, err)
	for rows.Next() {
		var c string
		require.NoError(t, rows.Scan(&c))
		active = append(active, c)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"A1", "B1", "C1"}, active, "the oldest active row of each user is kept")
	// The index exists and refuses a second active row.
	_, err = pool.Exec(ctx, `INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES (1, 'A4', 'applied')`)
	require.True(t, pgguard.IsUniqueViolation(err, guard.IndexName), "%v", err)
	// A second deploy finds it and does nothing.
	res, err := pgguard.CreateIndexConcurrently(ctx, pool, guard)
	require.NoError(t, err)
	require.False(t, res.Created)
}

func TestRemediationCheckAcceptsTheIndexBuiltOnline(t *testing.T) {
	// The table's migration without its index: CreateIndexConcurrently builds it.
	remediationCheck(t, pgtest.Pool(t), remediationGuard(), remediationTable)
}

func remediationCheck(t *testing.T, pool *pgxpool.Pool, guard pgguard.Guard, migrationSQL string) {
	n := 0
	// snippet:remediation-check
	guardtest.Check(t, pool, guardtest.Table{
		Guard: guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			if _, err := db.Exec(ctx, migrationSQL); err != nil { // the table, without its index
				return err
			}
			_, err := pgguard.CreateIndexConcurrently(ctx, db, guard)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			n++ // a fresh promo_code each time
			return `INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, $2, $3)`,
				[]any{key[0], fmt.Sprintf("promo_%d", n), status}
		},
		Key:            func(i int) []any { return []any{int64(1000 + i)} },
		ExemptStatuses: []string{"revoked"},
	})
	// end snippet
}
