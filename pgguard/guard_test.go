package pgguard_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/internal/pgcount"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// The seed's table: one active discount per user, a promotion code that is
// unique on its own, and revoked rows exempt.
var loyalty = pgguard.Guard{
	Table:          "loyalty_discounts",
	Columns:        []string{"user_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"applied", "skipped"},
	IndexName:      "uq_loyalty_discounts_active",
}

const insertDiscount = `INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, $2, 'applied')`

type domain struct {
	ctx     context.Context
	pool    *pgxpool.Pool
	counter *pgcount.StatementCounter
}

func setupDomain(t *testing.T, mode pgx.QueryExecMode, maxConns int32) *domain {
	t.Helper()
	d := &domain{ctx: context.Background(), counter: &pgcount.StatementCounter{}}
	d.pool = pgtest.PoolWithConfig(t, func(c *pgxpool.Config) {
		c.ConnConfig.DefaultQueryExecMode = mode
		d.counter.Configure(c)
		if maxConns > 0 {
			c.MaxConns = maxConns
		}
	})
	_, err := d.pool.Exec(d.ctx, `CREATE TABLE loyalty_discounts (
		id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		user_id    bigint NOT NULL,
		promo_code text   NOT NULL CONSTRAINT loyalty_discounts_promo_code_key UNIQUE,
		status     text   NOT NULL
	)`)
	require.NoError(t, err)
	ddl, err := loyalty.IndexDDL()
	require.NoError(t, err)
	_, err = d.pool.Exec(d.ctx, ddl)
	require.NoError(t, err)
	return d
}

func (d *domain) count(t *testing.T, where string) int {
	t.Helper()
	var n int
	require.NoError(t, d.pool.QueryRow(d.ctx, "SELECT count(*) FROM loyalty_discounts WHERE "+where).Scan(&n))
	return n
}

func TestGuardIndexDDL(t *testing.T) {
	t.Parallel()
	ddl, err := loyalty.IndexDDL()
	require.NoError(t, err)
	require.Equal(t, `CREATE UNIQUE INDEX IF NOT EXISTS "uq_loyalty_discounts_active" ON "loyalty_discounts" ("user_id") WHERE "status" IN ('applied', 'skipped')`, ddl)

	odd := pgguard.Guard{Schema: `my "s"`, Table: "Tax Forms", Columns: []string{"payee id", "year"}, StatusColumn: "st",
		ActiveStatuses: []string{"it's", `back\slash`}, IndexName: `uq "forms"`}
	ddl, err = odd.IndexDDL()
	require.NoError(t, err)
	require.Equal(t, `CREATE UNIQUE INDEX IF NOT EXISTS "uq ""forms""" ON "my ""s"""."Tax Forms" ("payee id", "year") WHERE "st" IN ('it''s', E'back\\slash')`, ddl)
	clause, err := odd.OnConflictDoNothing()
	require.NoError(t, err)
	require.Equal(t, `ON CONFLICT ("payee id", "year") WHERE "st" IN ('it''s', E'back\\slash') DO NOTHING`, clause)

	plain := pgguard.Guard{Table: "t", Columns: []string{"k"}, IndexName: "t_k"}
	ddl, err = plain.IndexDDL()
	require.NoError(t, err)
	require.Equal(t, `CREATE UNIQUE INDEX IF NOT EXISTS "t_k" ON "t" ("k")`, ddl)
}

func TestGuardValidate(t *testing.T) {
	t.Parallel()
	with := func(f func(g *pgguard.Guard)) pgguard.Guard {
		g := loyalty
		g.Columns = append([]string(nil), loyalty.Columns...)
		f(&g)
		return g
	}
	for name, g := range map[string]pgguard.Guard{
		"NoTable":            with(func(g *pgguard.Guard) { g.Table = "" }),
		"NoIndexName":        with(func(g *pgguard.Guard) { g.IndexName = "" }),
		"NoColumns":          with(func(g *pgguard.Guard) { g.Columns = nil }),
		"EmptyColumn":        with(func(g *pgguard.Guard) { g.Columns = []string{""} }),
		"DuplicateColumn":    with(func(g *pgguard.Guard) { g.Columns = []string{"a", "a"} }),
		"LongIndexName":      with(func(g *pgguard.Guard) { g.IndexName = strings.Repeat("x", 64) }),
		"NULInTable":         with(func(g *pgguard.Guard) { g.Table = "a\x00b" }),
		"BadUTF8Schema":      with(func(g *pgguard.Guard) { g.Schema = "\xff" }),
		"StatusesNoColumn":   with(func(g *pgguard.Guard) { g.StatusColumn = "" }),
		"ColumnNoStatuses":   with(func(g *pgguard.Guard) { g.ActiveStatuses = nil }),
		"EmptyStatus":        with(func(g *pgguard.Guard) { g.ActiveStatuses = []string{""} }),
		"NULStatus":          with(func(g *pgguard.Guard) { g.ActiveStatuses = []string{"a\x00"} }),
		"BadUTF8Status":      with(func(g *pgguard.Guard) { g.ActiveStatuses = []string{"\xc3("} }),
		"BadUTF8StatusColum": with(func(g *pgguard.Guard) { g.StatusColumn = "\xc3(" }),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			require.ErrorIs(t, g.Validate(), pgguard.ErrInvalidGuard)
			_, err := g.IndexDDL()
			require.ErrorIs(t, err, pgguard.ErrInvalidGuard)
			_, err = pgguard.InsertOnce(context.Background(), &pgxpool.Pool{}, g, "SELECT 1")
			require.ErrorIs(t, err, pgguard.ErrInvalidGuard)
		})
	}
	err := with(func(g *pgguard.Guard) { g.Table = strings.Repeat("t", 64) }).Validate()
	var ie *pgguard.IdentifierError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "Guard.Table", ie.Field)
	require.ErrorIs(t, err, pgguard.ErrInvalidIdentifier)

	_, err = pgguard.InsertOnce(context.Background(), nil, loyalty, insertDiscount, 1, "a")
	require.ErrorIs(t, err, pgguard.ErrNilDB)
	_, err = pgguard.Exists(context.Background(), (*pgxpool.Pool)(nil), loyalty, 1)
	require.ErrorIs(t, err, pgguard.ErrNilDB)
	_, err = pgguard.Exists(context.Background(), &pgxpool.Pool{}, loyalty, 1, 2)
	require.ErrorIs(t, err, pgguard.ErrInvalidGuard, "two key values for one key column")
}

// TestInsertOnceCollapsesOnlyTheGuardIndex: 23505 on the guard's index is
// "already there"; 23505 on any other index is a real error.
func TestInsertOnceCollapsesOnlyTheGuardIndex(t *testing.T) {
	t.Parallel()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			d := setupDomain(t, mode, 0)
			res, err := pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, 1, "PROMO-1")
			require.NoError(t, err)
			require.Equal(t, pgguard.InsertResult{Inserted: true, RowsAffected: 1}, res)

			res, err = pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, 1, "PROMO-2")
			require.NoError(t, err)
			require.False(t, res.Inserted, "a second active row for the user is already there")

			_, err = pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, 2, "PROMO-1")
			require.Error(t, err, "a duplicate promotion code is a real error")
			pgErr := requirePgCode(t, err, pgerrcode.UniqueViolation)
			require.Equal(t, "loyalty_discounts_promo_code_key", pgErr.ConstraintName)
			require.True(t, pgguard.IsUniqueViolation(err, "loyalty_discounts_promo_code_key"))
			require.False(t, pgguard.IsUniqueViolation(err, loyalty.IndexName))

			_, err = pgguard.InsertOnce(d.ctx, d.pool, loyalty, "INSERT INTO loyalty_discounts (user_id) VALUES (3)")
			requirePgCode(t, err, pgerrcode.NotNullViolation)
			require.Equal(t, 1, d.count(t, "true"))
		})
	}
}

func TestIsUniqueViolation(t *testing.T) {
	t.Parallel()
	require.False(t, pgguard.IsUniqueViolation(nil, "x"))
	require.False(t, pgguard.IsUniqueViolation(&pgconn.PgError{Code: pgerrcode.UniqueViolation}, ""))
	require.True(t, pgguard.IsUniqueViolation(fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: pgerrcode.UniqueViolation, ConstraintName: "x"}), "x"))
	require.False(t, pgguard.IsUniqueViolation(errors.New("duplicate key value violates unique constraint \"x\""), "x"))
}

// TestInsertOnceInsideTransaction: a collapse inside the caller's
// transaction leaves it usable, and its commit keeps its other work. Without
// the savepoint the same duplicate aborts the transaction (the hazard).
func TestInsertOnceInsideTransaction(t *testing.T) {
	t.Parallel()
	d := setupDomain(t, pgx.QueryExecModeCacheStatement, 0)
	_, err := d.pool.Exec(d.ctx, insertDiscount, 1, "PROMO-1")
	require.NoError(t, err)

	t.Run("WithoutSavepointTheTransactionIsAborted", func(t *testing.T) {
		tx, err := d.pool.Begin(d.ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(d.ctx) }()
		_, err = tx.Exec(d.ctx, insertDiscount, 1, "PROMO-X")
		requirePgCode(t, err, pgerrcode.UniqueViolation)
		_, err = tx.Exec(d.ctx, "SELECT 1")
		requirePgCode(t, err, pgerrcode.InFailedSQLTransaction)
		require.ErrorIs(t, tx.Commit(d.ctx), pgx.ErrTxCommitRollback)
	})

	tx, err := d.pool.Begin(d.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(d.ctx) }()
	res, err := pgguard.InsertOnce(d.ctx, tx, loyalty, insertDiscount, 1, "PROMO-2")
	require.NoError(t, err)
	require.False(t, res.Inserted)
	// Another index's violation is returned, and also leaves the transaction usable.
	_, err = pgguard.InsertOnce(d.ctx, tx, loyalty, insertDiscount, 5, "PROMO-1")
	requirePgCode(t, err, pgerrcode.UniqueViolation)
	res, err = pgguard.InsertOnce(d.ctx, tx, loyalty, insertDiscount, 2, "PROMO-3")
	require.NoError(t, err)
	require.True(t, res.Inserted)
	require.NoError(t, tx.Commit(d.ctx))
	require.Equal(t, 2, d.count(t, "true"))

	// The ON CONFLICT form collapses without an error at all.
	clause, err := loyalty.OnConflictDoNothing()
	require.NoError(t, err)
	tx, err = d.pool.Begin(d.ctx)
	require.NoError(t, err)
	res, err = pgguard.InsertOnce(d.ctx, tx, loyalty, insertDiscount+" "+clause, 2, "PROMO-4")
	require.NoError(t, err)
	require.False(t, res.Inserted)
	_, err = tx.Exec(d.ctx, insertDiscount+" "+clause, 2, "PROMO-5")
	require.NoError(t, err)
	require.NoError(t, tx.Commit(d.ctx))
	require.Equal(t, 2, d.count(t, "true"))
}

func TestRevokedRowDoesNotBlockANewOne(t *testing.T) {
	t.Parallel()
	d := setupDomain(t, pgx.QueryExecModeCacheStatement, 0)
	res, err := pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, 1, "PROMO-1")
	require.NoError(t, err)
	require.True(t, res.Inserted)
	_, err = d.pool.Exec(d.ctx, "UPDATE loyalty_discounts SET status = 'revoked' WHERE user_id = 1")
	require.NoError(t, err)
	ok, err := pgguard.Exists(d.ctx, d.pool, loyalty, 1)
	require.NoError(t, err)
	require.False(t, ok, "a revoked row is not active")

	res, err = pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, 1, "PROMO-2")
	require.NoError(t, err)
	require.True(t, res.Inserted, "cancel and resubscribe earns a fresh row")
	res, err = pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, 1, "PROMO-3")
	require.NoError(t, err)
	require.False(t, res.Inserted)
	require.Equal(t, 2, d.count(t, "user_id = 1"))
}

// TestInsertOnceConcurrent: 32 goroutines insert one user's discount, on the
// pool and each in its own transaction: one row, one "inserted".
func TestInsertOnceConcurrent(t *testing.T) {
	t.Parallel()
	const n = 32
	d := setupDomain(t, pgx.QueryExecModeCacheStatement, 16)
	for user, inTx := range map[int64]bool{1: false, 2: true} {
		var inserted atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				code := "P-" + string(rune('A'+user)) + "-" + string(rune('a'+i))
				var res pgguard.InsertResult
				var err error
				if !inTx {
					res, err = pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, user, code)
				} else {
					err = pgx.BeginFunc(d.ctx, d.pool, func(tx pgx.Tx) error {
						res, err = pgguard.InsertOnce(d.ctx, tx, loyalty, insertDiscount, user, code)
						return err
					})
				}
				if err != nil {
					errs <- err
				} else if res.Inserted {
					inserted.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.EqualValues(t, 1, inserted.Load(), "in tx: %v", inTx)
		require.Equal(t, 1, d.count(t, "user_id = "+string(rune('0'+user))))
	}
}

func TestInsertOnceRowAndFetchActive(t *testing.T) {
	t.Parallel()
	d := setupDomain(t, pgx.QueryExecModeCacheStatement, 0)
	const q = insertDiscount + " RETURNING id"
	var id int64
	res, err := pgguard.InsertOnceRow(d.ctx, d.pool, loyalty, []any{&id}, q, 1, "PROMO-1")
	require.NoError(t, err)
	require.True(t, res.Inserted)
	require.Positive(t, id)

	var again int64 = -1
	tx, err := d.pool.Begin(d.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(d.ctx) }()
	res, err = pgguard.InsertOnceRow(d.ctx, tx, loyalty, []any{&again}, q, 1, "PROMO-2")
	require.NoError(t, err)
	require.False(t, res.Inserted)
	require.EqualValues(t, -1, again, "dest is untouched when the row was already there")

	var existingID int64
	var code string
	found, err := pgguard.FetchActive(d.ctx, tx, loyalty, []string{"id", "promo_code"}, []any{&existingID, &code}, 1)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, id, existingID)
	require.Equal(t, "PROMO-1", code)
	found, err = pgguard.FetchActive(d.ctx, tx, loyalty, []string{"id"}, []any{&existingID}, 2)
	require.NoError(t, err)
	require.False(t, found)
	_, err = pgguard.FetchActive(d.ctx, tx, loyalty, []string{"id"}, []any{&existingID, &code}, 1)
	require.ErrorIs(t, err, pgguard.ErrInvalidGuard)
	require.NoError(t, tx.Commit(d.ctx))
}

// TestPreflight: Exists for one key, ExistingKeys for a batch in one query,
// with one key column and with two.
func TestPreflight(t *testing.T) {
	t.Parallel()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			d := setupDomain(t, mode, 0)
			_, err := d.pool.Exec(d.ctx, `INSERT INTO loyalty_discounts (user_id, promo_code, status)
				SELECT u, 'P' || u, CASE WHEN u % 3 = 0 THEN 'revoked' ELSE 'applied' END FROM generate_series(1, 600) u`)
			require.NoError(t, err)

			candidates := make([]int64, 1000)
			for i := range candidates {
				candidates[i] = int64(i + 1)
			}
			n, _ := d.counter.Measure(func() {
				got, err := pgguard.ExistingKeys(d.ctx, d.pool, loyalty, candidates)
				require.NoError(t, err)
				require.Len(t, got, 400)
				require.True(t, got[1])
				require.False(t, got[3], "revoked")
				require.False(t, got[601], "absent")
			})
			require.Equal(t, 1, n, "a batch of 1000 candidates is one query")
			empty, err := pgguard.ExistingKeys(d.ctx, d.pool, loyalty, []int64(nil))
			require.NoError(t, err)
			require.Empty(t, empty)

			n, _ = d.counter.Measure(func() {
				ok, err := pgguard.Exists(d.ctx, d.pool, loyalty, int64(2))
				require.NoError(t, err)
				require.True(t, ok)
			})
			require.Equal(t, 1, n)

			// Two key columns: a 1099 notice once per payee and tax year.
			_, err = d.pool.Exec(d.ctx, `CREATE TABLE notices (payee text NOT NULL, tax_year int NOT NULL, status text NOT NULL)`)
			require.NoError(t, err)
			notices := pgguard.Guard{Table: "notices", Columns: []string{"payee", "tax_year"}, StatusColumn: "status",
				ActiveStatuses: []string{"sent"}, IndexName: "uq_notices"}
			ddl, err := notices.IndexDDL()
			require.NoError(t, err)
			_, err = d.pool.Exec(d.ctx, ddl)
			require.NoError(t, err)
			_, err = d.pool.Exec(d.ctx, `INSERT INTO notices VALUES ('alice', 2024, 'sent'), ('bob', 2025, 'sent'), ('carol', 2025, 'failed')`)
			require.NoError(t, err)
			type payeeYear struct {
				Payee string
				Year  int32
			}
			got, err := pgguard.ExistingKeys(d.ctx, d.pool, notices, []payeeYear{
				{"alice", 2024}, {"alice", 2025}, {"bob", 2024}, {"bob", 2025}, {"carol", 2025},
			})
			require.NoError(t, err)
			require.Equal(t, map[payeeYear]bool{{"alice", 2024}: true, {"bob", 2025}: true}, got)
			ok, err := pgguard.Exists(d.ctx, d.pool, notices, "alice", 2025)
			require.NoError(t, err)
			require.False(t, ok)
			_, err = pgguard.ExistingKeys(d.ctx, d.pool, notices, []string{"alice"})
			require.ErrorIs(t, err, pgguard.ErrInvalidGuard)
			type hidden struct {
				Payee string
				year  int32
			}
			_, err = pgguard.ExistingKeys(d.ctx, d.pool, notices, []hidden{{"alice", 2024}})
			require.ErrorIs(t, err, pgguard.ErrInvalidGuard)
		})
	}
}

// TestStatusLiteralsAreQuoted: statuses with a quote and a backslash make a
// working index and predicate, in the extended and the simple protocol.
func TestStatusLiteralsAreQuoted(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			d := setupDomain(t, mode, 0)
			g := pgguard.Guard{Table: `odd "t"`, Columns: []string{"k"}, StatusColumn: "s",
				ActiveStatuses: []string{"it's", `a\b`}, IndexName: `odd "t" uq`}
			_, err := d.pool.Exec(d.ctx, `CREATE TABLE "odd ""t""" (k int NOT NULL, s text NOT NULL)`)
			require.NoError(t, err)
			ddl, err := g.IndexDDL()
			require.NoError(t, err)
			_, err = d.pool.Exec(d.ctx, ddl)
			require.NoError(t, err)
			ins := `INSERT INTO "odd ""t""" (k, s) VALUES ($1, $2)`
			for _, tc := range []struct {
				k        int
				s        string
				inserted bool
			}{{1, "it's", true}, {1, `a\b`, false}, {1, "other", true}, {2, `a\b`, true}, {2, "it's", false}, {2, `a\\b`, true}} {
				res, err := pgguard.InsertOnce(d.ctx, d.pool, g, ins, tc.k, tc.s)
				require.NoError(t, err)
				require.Equal(t, tc.inserted, res.Inserted, "%d %q", tc.k, tc.s)
			}
			got, err := pgguard.ExistingKeys(d.ctx, d.pool, g, []int32{1, 2, 3})
			require.NoError(t, err)
			require.Equal(t, map[int32]bool{1: true, 2: true}, got)
			clause, err := g.OnConflictDoNothing()
			require.NoError(t, err)
			res, err := pgguard.InsertOnce(d.ctx, d.pool, g, ins+" "+clause, 1, "it's")
			require.NoError(t, err)
			require.False(t, res.Inserted, "the ON CONFLICT clause infers the partial index")
		})
	}
}

func TestInsertOnceStatementCounts(t *testing.T) {
	t.Parallel()
	d := setupDomain(t, pgx.QueryExecModeCacheStatement, 0)
	n, _ := d.counter.Measure(func() {
		_, err := pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, 1, "A")
		require.NoError(t, err)
		_, err = pgguard.InsertOnce(d.ctx, d.pool, loyalty, insertDiscount, 1, "B")
		require.NoError(t, err)
	})
	require.Equal(t, 2, n, "with a pool: the INSERT only, inserted or collapsed")
	tx, err := d.pool.Begin(d.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(d.ctx) }()
	n, stmts := d.counter.Measure(func() {
		_, err := pgguard.InsertOnce(d.ctx, tx, loyalty, insertDiscount, 1, "C")
		require.NoError(t, err)
	})
	require.Equal(t, 3, n, "in a transaction: SAVEPOINT, INSERT, ROLLBACK TO: %q", stmts)
}
