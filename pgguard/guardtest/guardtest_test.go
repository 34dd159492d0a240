package guardtest_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
)

// recorder captures failures (and log lines) instead of failing the test,
// so these tests can show that Check fails on broken tables.
type recorder struct {
	*testing.T
	mu   sync.Mutex
	errs []string
	logs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
	r.T.Logf(format, args...)
}

func (r *recorder) joined() string { return strings.Join(r.errs, "\n") }

// The seed's table: one active discount per user, a promotion code that is
// unique on its own, and revoked (or failed) rows exempt.
const (
	loyaltyTable = `CREATE TABLE loyalty_discounts (
		id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		user_id    bigint NOT NULL,
		promo_code text   NOT NULL CONSTRAINT loyalty_discounts_promo_code_key UNIQUE,
		status     text   NOT NULL
	)`
	seedIndex = `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id)
		WHERE status IN ('applied', 'skipped')`
)

var loyalty = pgguard.Guard{
	Table:          "loyalty_discounts",
	Columns:        []string{"user_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"applied", "skipped"},
	IndexName:      "uq_loyalty_discounts_active",
}

func migrate(ddl ...string) func(context.Context, pgguard.DBTX) error {
	return func(ctx context.Context, db pgguard.DBTX) error {
		for _, s := range ddl {
			if _, err := db.Exec(ctx, s); err != nil {
				return err
			}
		}
		return nil
	}
}

// loyaltyCase is the seed's table with the given migration.
func loyaltyCase(ddl ...string) guardtest.Table {
	var n atomic.Int64
	return guardtest.Table{
		Guard:   loyalty,
		Migrate: migrate(ddl...),
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, $2, $3)`,
				[]any{key[0], fmt.Sprintf("promo_%d", n.Add(1)), status}
		},
		Key:            func(i int) []any { return []any{int64(1000 + i)} },
		ExemptStatuses: []string{"revoked", "failed"},
	}
}

func check(t *testing.T, db pgguard.DBTX, tbl guardtest.Table) (*recorder, bool) {
	t.Helper()
	rec := &recorder{T: t}
	ok := guardtest.Check(rec, db, tbl)
	return rec, ok
}

func requirePasses(t *testing.T, db pgguard.DBTX, tbl guardtest.Table) *recorder {
	t.Helper()
	rec, ok := check(t, db, tbl)
	require.True(t, ok, rec.joined())
	require.Empty(t, rec.errs)
	return rec
}

func requireFails(t *testing.T, tbl guardtest.Table, want ...string) *recorder {
	t.Helper()
	rec, ok := check(t, pgtest.Pool(t), tbl)
	t.Log(rec.joined())
	require.False(t, ok)
	for _, w := range want {
		require.Contains(t, rec.joined(), w)
	}
	return rec
}

func TestPassesTheSeedTable(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	rec := requirePasses(t, pool, loyaltyCase(loyaltyTable, seedIndex))
	require.Empty(t, rec.logs, "the other-index check must have run")

	// Every row Check wrote was rolled back.
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM loyalty_discounts`).Scan(&n))
	require.Zero(t, n)
}

func TestPassesTheExample(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	requirePasses(t, pgtest.Pool(t), guardtest.Table{
		Guard: discounts,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			_, err := db.Exec(ctx, discountsMigration)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, $2, $3)`,
				[]any{key[0], fmt.Sprintf("promo_%d", n.Add(1)), status}
		},
		Key:            func(i int) []any { return []any{int64(1000 + i)} },
		ExemptStatuses: []string{"revoked", "failed"},
	})
}

// The example's own fresh schema helper, on the server TEST_DATABASE_URL
// names.
func TestExampleFreshSchema(t *testing.T) {
	t.Parallel()
	dsn := os.Getenv("TEST_DATABASE_URL")
	if dsn == "" {
		t.Skip("TEST_DATABASE_URL is not set")
	}
	requirePasses(t, freshSchema(t, dsn), loyaltyCase(loyaltyTable, seedIndex))
}

func TestPassesInEveryQueryExecMode(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = mode })
			requirePasses(t, pool, loyaltyCase(loyaltyTable, seedIndex))
		})
	}
}

func TestPassesInsideATransactionThatIsRolledBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	schema := "guardtest_" + strings.ToLower(rand.Text()[:12])
	_, err = tx.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SET LOCAL search_path = "+schema)
	require.NoError(t, err)
	requirePasses(t, tx, loyaltyCase(loyaltyTable, seedIndex))
	require.NoError(t, tx.Rollback(ctx))

	var exists bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT to_regnamespace($1) IS NOT NULL`, schema).Scan(&exists))
	require.False(t, exists, "the schema and the migration were rolled back with the transaction")
}

func TestPassesAnIndexBuiltConcurrently(t *testing.T) {
	t.Parallel()
	requirePasses(t, pgtest.Pool(t), loyaltyCase(loyaltyTable,
		`CREATE UNIQUE INDEX CONCURRENTLY uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE status IN ('applied', 'skipped')`))
}

func TestPassesOtherPredicateShapes(t *testing.T) {
	t.Parallel()
	for name, pred := range map[string]string{
		"Or":            `status = 'skipped' OR status = 'applied'`,
		"ArrayConstant": `status = ANY ('{applied,skipped}')`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			requirePasses(t, pgtest.Pool(t), loyaltyCase(loyaltyTable,
				`CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE `+pred))
		})
	}
}

func TestPassesAVarcharStatusColumn(t *testing.T) {
	t.Parallel()
	requirePasses(t, pgtest.Pool(t), loyaltyCase(
		strings.Replace(loyaltyTable, "status     text", "status     varchar(20)", 1), seedIndex))
}

func TestPassesASingleActiveStatus(t *testing.T) {
	t.Parallel()
	tbl := loyaltyCase(loyaltyTable, `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE status = 'applied'`)
	tbl.Guard.ActiveStatuses = []string{"applied"}
	tbl.ExemptStatuses = []string{"revoked", "skipped"}
	requirePasses(t, pgtest.Pool(t), tbl)
}

func TestPassesAnEnumStatusWithDerivedExemptStatuses(t *testing.T) {
	t.Parallel()
	tbl := loyaltyCase(
		`CREATE TYPE discount_status AS ENUM ('applied', 'skipped', 'revoked', 'failed')`,
		strings.Replace(loyaltyTable, "status     text", "status     discount_status", 1),
		seedIndex)
	tbl.ExemptStatuses = nil // every label but applied and skipped
	var tried []string
	row := tbl.Row
	tbl.Row = func(key []any, status string) (string, []any) {
		tried = append(tried, status)
		return row(key, status)
	}
	requirePasses(t, pgtest.Pool(t), tbl)
	require.Contains(t, tried, "revoked")
	require.Contains(t, tried, "failed")
}

func TestPassesQuotedNamesAndSeveralKeyColumnsInANamedSchema(t *testing.T) {
	t.Parallel()
	pool, schema := pgtest.Schema(t)
	g := pgguard.Guard{
		Schema:         schema,
		Table:          "Tax Forms",
		Columns:        []string{"payee id", "Year"},
		StatusColumn:   "St",
		ActiveStatuses: []string{"it's", `back\slash`},
		IndexName:      `uq "forms"`,
	}
	ddl, err := g.IndexDDL()
	require.NoError(t, err)
	tbl := guardtest.Table{
		Guard: g,
		Migrate: migrate(
			`CREATE TABLE "Tax Forms" ("payee id" text NOT NULL, "Year" int NOT NULL, "St" text NOT NULL)`,
			ddl),
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO "Tax Forms" ("payee id", "Year", "St") VALUES ($1, $2, $3)`, []any{key[0], key[1], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("payee %d", i), 2024} },
		ExemptStatuses: []string{"void"},
	}
	rec := requirePasses(t, pool, tbl)
	require.Contains(t, strings.Join(rec.logs, "\n"), "has no unique index besides")
}

// orders has a guard without a StatusColumn: every row is active.
const ordersTable = `CREATE TABLE orders (id bigserial PRIMARY KEY, order_ref text NOT NULL)`

func ordersCase(ddl ...string) guardtest.Table {
	return guardtest.Table{
		Guard:   pgguard.Guard{Table: "orders", Columns: []string{"order_ref"}, IndexName: "uq_orders_ref"},
		Migrate: migrate(ddl...),
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO orders (order_ref) VALUES ($1)`, []any{key[0]}
		},
		Key: func(i int) []any { return []any{fmt.Sprint("ord_", i)} },
	}
}

func TestPassesAGuardThatIsNotPartial(t *testing.T) {
	t.Parallel()
	requirePasses(t, pgtest.Pool(t), ordersCase(ordersTable, `CREATE UNIQUE INDEX uq_orders_ref ON orders (order_ref)`))
}

func TestProvokesAnotherIndexThroughAnExemptCopy(t *testing.T) {
	t.Parallel()
	// No primary key; the other unique index includes the key column, so
	// only a copy under an exempt status clashes with it.
	tbl := loyaltyCase(
		`CREATE TABLE loyalty_discounts (user_id bigint NOT NULL, promo_code text NOT NULL, status text NOT NULL,
			CONSTRAINT loyalty_discounts_user_code UNIQUE (user_id, promo_code))`,
		seedIndex)
	rec := requirePasses(t, pgtest.Pool(t), tbl)
	require.Empty(t, rec.logs)
}

func TestSaysSoWhenNoOtherViolationCanBeProvoked(t *testing.T) {
	t.Parallel()
	tbl := loyaltyCase(
		`CREATE TABLE loyalty_discounts (user_id bigint NOT NULL, promo_code text NOT NULL, status text NOT NULL,
			CONSTRAINT loyalty_discounts_all UNIQUE (user_id, status, promo_code))`,
		seedIndex)
	rec := requirePasses(t, pgtest.Pool(t), tbl)
	require.Contains(t, strings.Join(rec.logs, "\n"), "could not provoke a violation of another unique index of loyalty_discounts (loyalty_discounts_all)")
}

func TestFailsABrokenIndex(t *testing.T) {
	t.Parallel()
	const idx = `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts `
	for name, tc := range map[string]struct {
		ddl  []string
		want []string
	}{
		"Missing": {
			ddl:  []string{loyaltyTable},
			want: []string{"guardtest: no unique index named uq_loyalty_discounts_active on table loyalty_discounts (its unique indexes: loyalty_discounts_pkey (id), loyalty_discounts_promo_code_key (promo_code))"},
		},
		"NotPartial": {
			ddl: []string{loyaltyTable, idx + `(user_id)`},
			want: []string{
				"index uq_loyalty_discounts_active is not partial: a revoked row would block a new one forever",
				`a row with status "revoked" blocks a new row with status "applied" for the same key [1000]`,
			},
		},
		"PredicateMissesSkipped": {
			ddl: []string{loyaltyTable, idx + `(user_id) WHERE status IN ('applied')`},
			want: []string{
				"index uq_loyalty_discounts_active's predicate covers [applied] but the active statuses are [applied skipped] (not covered: [skipped]",
				`a duplicate row with status "skipped" for key [1002] was inserted next to its active row with status "applied"`,
			},
		},
		"PredicateCoversAnExemptStatus": {
			ddl: []string{loyaltyTable, idx + `(user_id) WHERE status IN ('applied', 'skipped', 'failed')`},
			want: []string{
				"index uq_loyalty_discounts_active's predicate covers [applied skipped failed] but the active statuses are [applied skipped] (covered but not active: [failed]",
				`a row with status "failed" blocks a new row with status "applied"`,
			},
		},
		"WrongColumn": {
			ddl: []string{loyaltyTable, idx + `(promo_code) WHERE status IN ('applied', 'skipped')`},
			want: []string{
				"index uq_loyalty_discounts_active on table loyalty_discounts is over (promo_code) but the guard's key columns are (user_id)",
				"was inserted next to its active row",
			},
		},
		"ExtraKeyColumn": {
			ddl:  []string{loyaltyTable, idx + `(user_id, promo_code) WHERE status IN ('applied', 'skipped')`},
			want: []string{"is over (user_id, promo_code) but the guard's key columns are (user_id)"},
		},
		"ExpressionKey": {
			ddl:  []string{loyaltyTable, idx + `((user_id + 0)) WHERE status IN ('applied', 'skipped')`},
			want: []string{"is over ((user_id + 0)) but the guard's key columns are (user_id)"},
		},
		"NotUnique": {
			ddl: []string{loyaltyTable, `CREATE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE status IN ('applied', 'skipped')`},
			want: []string{
				"index uq_loyalty_discounts_active on table loyalty_discounts is not unique",
				"was inserted next to its active row",
			},
		},
		"PredicateOnAnotherColumn": {
			ddl:  []string{loyaltyTable, idx + `(user_id) WHERE promo_code IN ('applied', 'skipped')`},
			want: []string{"index uq_loyalty_discounts_active's predicate tests column promo_code, not the guard's status column status"},
		},
		"UnreadablePredicate": {
			ddl: []string{loyaltyTable, idx + `(user_id) WHERE status IN ('applied', 'skipped') AND promo_code <> ''`},
			want: []string{
				`index uq_loyalty_discounts_active's predicate has a shape guardtest cannot read`,
				`write it as "status" IN (...) over the active statuses: CREATE UNIQUE INDEX uq_loyalty_discounts_active ON`,
			},
		},
		"PredicateByExclusion": {
			ddl:  []string{loyaltyTable, idx + `(user_id) WHERE status NOT IN ('revoked', 'failed')`},
			want: []string{`index uq_loyalty_discounts_active's predicate has a shape guardtest cannot read`, `<> ALL`},
		},
		"ExemptRowsUniquePerKey": {
			ddl:  []string{loyaltyTable, seedIndex, `CREATE UNIQUE INDEX loyalty_discounts_user_status ON loyalty_discounts (user_id, status)`},
			want: []string{`a second row with status "revoked" for key [1000] was refused`},
		},
		"NullableKey": {
			ddl:  []string{strings.Replace(loyaltyTable, "user_id    bigint NOT NULL", "user_id    bigint", 1), seedIndex},
			want: []string{"key column user_id of table loyalty_discounts is nullable and index uq_loyalty_discounts_active treats NULLs as distinct"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			requireFails(t, loyaltyCase(tc.ddl...), tc.want...)
		})
	}
}

func TestFailsAnInvalidIndex(t *testing.T) {
	t.Parallel()
	tbl := loyaltyCase()
	tbl.Migrate = func(ctx context.Context, db pgguard.DBTX) error {
		if err := migrate(loyaltyTable,
			`INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES (1, 'a', 'applied'), (1, 'b', 'applied')`)(ctx, db); err != nil {
			return err
		}
		// Fails on the duplicates and leaves an invalid index behind.
		_, err := db.Exec(ctx, `CREATE UNIQUE INDEX CONCURRENTLY uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE status IN ('applied', 'skipped')`)
		if err == nil {
			return fmt.Errorf("CREATE INDEX CONCURRENTLY over duplicates succeeded")
		}
		return nil
	}
	requireFails(t, tbl, "index uq_loyalty_discounts_active on table loyalty_discounts is invalid (left by a failed CREATE INDEX CONCURRENTLY?)")
}

func TestFailsADeferrableConstraint(t *testing.T) {
	t.Parallel()
	requireFails(t, ordersCase(`CREATE TABLE orders (id bigserial PRIMARY KEY, order_ref text NOT NULL,
			CONSTRAINT uq_orders_ref UNIQUE (order_ref) DEFERRABLE INITIALLY DEFERRED)`),
		"index uq_orders_ref on table orders backs a DEFERRABLE constraint",
		`a duplicate row for key [ord_0] was inserted next to its active row`)
}

func TestFailsAPartialIndexForAGuardWithoutStatus(t *testing.T) {
	t.Parallel()
	requireFails(t, ordersCase(ordersTable, `CREATE UNIQUE INDEX uq_orders_ref ON orders (order_ref) WHERE id > 0`),
		"index uq_orders_ref is partial (WHERE (id > 0)) but the guard has no StatusColumn")
}

func TestFailsARowBuilderThatReusesUniqueValues(t *testing.T) {
	t.Parallel()
	tbl := loyaltyCase(loyaltyTable, seedIndex)
	tbl.Row = func(key []any, status string) (string, []any) {
		return `INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, 'same', $2)`, []any{key[0], status}
	}
	requireFails(t, tbl, "violated loyalty_discounts_promo_code_key, not uq_loyalty_discounts_active: Table.Row must give every row fresh values for the table's other unique columns")
}

func TestRefusesAnIncompleteTable(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		edit func(*guardtest.Table)
		want string
	}{
		"NoRow":           {func(tbl *guardtest.Table) { tbl.Row = nil }, "guardtest: Table needs Row and Key"},
		"InvalidGuard":    {func(tbl *guardtest.Table) { tbl.Guard.IndexName = "" }, "guardtest: Table.Guard: pgguard: invalid guard"},
		"NoExempt":        {func(tbl *guardtest.Table) { tbl.ExemptStatuses = nil }, "guardtest: Table.ExemptStatuses is empty"},
		"ActiveAsExempt":  {func(tbl *guardtest.Table) { tbl.ExemptStatuses = []string{"skipped"} }, `Table.ExemptStatuses lists "skipped", an active status`},
		"KeyArity":        {func(tbl *guardtest.Table) { tbl.Key = func(int) []any { return []any{1, 2} } }, "Table.Key(0) returned 2 values for the 1 key columns (user_id)"},
		"SameKeys":        {func(tbl *guardtest.Table) { tbl.Key = func(int) []any { return []any{int64(7)} } }, "Table.Key(0) and Table.Key(1) are the same key [7]"},
		"MigrateFails":    {func(tbl *guardtest.Table) { tbl.Migrate = migrate(`CREATE TABLE broken (`) }, "guardtest: Migrate: ERROR: syntax error"},
		"NoTable":         {func(tbl *guardtest.Table) { tbl.Migrate = nil }, "guardtest: table loyalty_discounts does not exist"},
		"NoStatusColumn":  {func(tbl *guardtest.Table) { tbl.Guard.StatusColumn = "state" }, "table loyalty_discounts has no column state (Guard.StatusColumn)"},
		"ExemptNoStatus":  {func(tbl *guardtest.Table) { tbl.Guard.StatusColumn, tbl.Guard.ActiveStatuses = "", nil }, "Table.ExemptStatuses is set but the guard has no StatusColumn"},
		"ExtraExempt":     {func(tbl *guardtest.Table) { tbl.ExemptStatuses = []string{"revoked", "x"} }, ""},
		"NilDBIsRefused":  {nil, "guardtest: nil db"},
		"WrongIndexName":  {func(tbl *guardtest.Table) { tbl.Guard.IndexName = "loyalty_discounts_pkey" }, "index loyalty_discounts_pkey on table loyalty_discounts is over (id) but the guard's key columns are (user_id)"},
		"StatusCheckFail": {func(tbl *guardtest.Table) { tbl.ExemptStatuses = []string{"void"} }, `inserting a row with status "void": Table.Row([1000], "void"): ERROR: new row for relation "loyalty_discounts" violates check constraint`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tbl := loyaltyCase(loyaltyTable, `ALTER TABLE loyalty_discounts ADD CHECK (status IN ('applied', 'skipped', 'revoked', 'failed', 'x'))`, seedIndex)
			var db pgguard.DBTX = pgtest.Pool(t)
			if tc.edit == nil {
				db = (*pgxpool.Pool)(nil)
			} else {
				tc.edit(&tbl)
			}
			rec, ok := check(t, db, tbl)
			if tc.want == "" { // a sanity case: the edit keeps the table valid
				require.True(t, ok, rec.joined())
				return
			}
			require.False(t, ok)
			require.Contains(t, rec.joined(), tc.want)
		})
	}
}

// TestThePredicateReadCatchesWhatInsertProbesMiss is why guardtest reads the
// index's predicate back from the catalog instead of relying on inserted
// rows alone: some broken predicates let every probe row through. An extra
// condition (rows with an empty promo code escape the guard) and a
// predicate by exclusion (any new status, say 'pending_review', would be
// guarded without anyone deciding it) pass every insert probe; only the
// predicate read fails them.
func TestThePredicateReadCatchesWhatInsertProbesMiss(t *testing.T) {
	t.Parallel()
	const idx = `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) `
	for name, pred := range map[string]string{
		"ExtraCondition": `WHERE status IN ('applied', 'skipped') AND promo_code <> ''`,
		"ByExclusion":    `WHERE status NOT IN ('revoked', 'failed')`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rec := requireFails(t, loyaltyCase(loyaltyTable, idx+pred), "predicate has a shape guardtest cannot read")
			for _, e := range rec.errs {
				require.Contains(t, e, "predicate", "only the predicate read fails this index: every insert probe passed")
			}
		})
	}
}
