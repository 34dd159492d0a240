// Package guardtest is a contract test for teams' own domain tables
// guarded by a partial unique index (a pgguard.Guard). Call Check from a
// _test.go file with the guard your code uses, your migration, and a way to
// build rows; it runs the migration, reads the index back from the catalog
// (trusting nothing in the guard) and drives inserts through
// pgguard.InsertOnce, failing with a message that names the broken rule:
//
//	no unique index named uq_loyalty_discounts_active on table loyalty_discounts (its unique indexes: ...)
//	index uq_loyalty_discounts_active is not partial: a revoked row would block a new one forever ...
//	index uq_loyalty_discounts_active's predicate covers [applied] but the active statuses are [applied skipped] ...
//	index uq_loyalty_discounts_active on table loyalty_discounts is over (promo_code) but the guard's key columns are (user_id)
//	index uq_loyalty_discounts_active on table loyalty_discounts is not unique: ...
//
// For example:
//
//	func TestLoyaltyDiscountsGuard(t *testing.T) {
//		db := freshSchema(t) // a pool whose search_path is a new, empty schema
//		var n int
//		guardtest.Check(t, db, guardtest.Table{
//			Guard:   loyalty.Guard, // the value production uses
//			Migrate: func(ctx context.Context, db pgguard.DBTX) error {
//				_, err := db.Exec(ctx, migrations.LoyaltyDiscounts) // your migration's SQL
//				return err
//			},
//			Row: func(key []any, status string) (string, []any) {
//				n++
//				return `INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, $2, $3)`,
//					[]any{key[0], fmt.Sprintf("promo_%d", n), status}
//			},
//			Key:            func(i int) []any { return []any{int64(1000 + i)} },
//			ExemptStatuses: []string{"revoked", "failed"},
//		})
//	}
//
// # A throwaway schema
//
// Check's own rows are always rolled back, but the migration's DDL stays
// wherever db points, so give Check a place of its own. Either a fresh
// schema: CREATE SCHEMA with a unique name, a pool whose
// ConnConfig.RuntimeParams["search_path"] is that schema, and DROP SCHEMA
// ... CASCADE in t.Cleanup (see the package example). Or, when the
// migration runs in a transaction (no CREATE INDEX CONCURRENTLY), a
// transaction that the test rolls back: Begin, CREATE SCHEMA and SET LOCAL
// search_path in it, then pass the pgx.Tx to Check. A database created for
// the CI run works too.
//
// It depends on pgguard, pgx and pgerrcode only.
package guardtest
