package pgguard_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/pgguard"
)

// indexState reads the guard's index back: whether it exists, is valid,
// and its definition.
func (b *auditBundle) indexState(t *testing.T, name string) (exists, valid bool, def string) {
	t.Helper()
	err := b.pool.QueryRow(b.ctx, `SELECT i.indisvalid, pg_get_indexdef(i.indexrelid)
		FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace`, name).Scan(&valid, &def)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, ""
	}
	require.NoError(t, err)
	return true, valid, def
}

// requireGuarded proves the index guards the table: a duplicate active row
// collapses through InsertOnce, and the guard's ON CONFLICT clause infers
// the index.
func (b *auditBundle) requireGuarded(t *testing.T) {
	t.Helper()
	exists, valid, def := b.indexState(t, loyalty.IndexName)
	require.True(t, exists && valid, "index %s: exists %v, valid %v", loyalty.IndexName, exists, valid)
	require.Equal(t, `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON `+b.schema(t)+`.loyalty_discounts USING btree (user_id) WHERE (status = ANY (ARRAY['applied'::text, 'skipped'::text]))`, def)

	const ins = `INSERT INTO loyalty_discounts (user_id, promo_code, status, created_at) VALUES ($1, $2, 'applied', now())`
	res, err := pgguard.InsertOnce(b.ctx, b.pool, loyalty, ins, 424242, "first")
	require.NoError(t, err)
	require.True(t, res.Inserted)
	res, err = pgguard.InsertOnce(b.ctx, b.pool, loyalty, ins, 424242, "second")
	require.NoError(t, err)
	require.False(t, res.Inserted, "the index collapses a duplicate")
	clause, err := loyalty.OnConflictDoNothing()
	require.NoError(t, err)
	res, err = pgguard.InsertOnce(b.ctx, b.pool, loyalty, ins+" "+clause, 424242, "third")
	require.NoError(t, err)
	require.False(t, res.Inserted, "ON CONFLICT infers the index")
}

func (b *auditBundle) schema(t *testing.T) string {
	t.Helper()
	var s string
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT current_schema()`).Scan(&s))
	return s
}

// rawConcurrentBuild is the guard's index built by hand, concurrently, the
// way a migration tool would.
func rawConcurrentBuild(t *testing.T) string {
	t.Helper()
	ddl, err := loyalty.IndexDDL()
	require.NoError(t, err)
	return strings.Replace(ddl, "CREATE UNIQUE INDEX IF NOT EXISTS", "CREATE UNIQUE INDEX CONCURRENTLY", 1)
}

func TestCreateIndexConcurrentlyBuildsOnACleanTable(t *testing.T) {
	t.Parallel()
	pool := func(t *testing.T, b *auditBundle) (pgguard.DBTX, func()) { return b.pool, func() {} }
	for name, tc := range map[string]struct {
		mode   pgx.QueryExecMode
		handle func(t *testing.T, b *auditBundle) (pgguard.DBTX, func())
	}{
		"Pool":               {pgx.QueryExecModeCacheStatement, pool},
		"PoolSimpleProtocol": {pgx.QueryExecModeSimpleProtocol, pool},
		"PoolConn": {pgx.QueryExecModeCacheStatement, func(t *testing.T, b *auditBundle) (pgguard.DBTX, func()) {
			c, err := b.pool.Acquire(b.ctx)
			require.NoError(t, err)
			return c, c.Release
		}},
		"Conn": {pgx.QueryExecModeCacheStatement, func(t *testing.T, b *auditBundle) (pgguard.DBTX, func()) {
			c, err := b.pool.Acquire(b.ctx)
			require.NoError(t, err)
			return c.Conn(), c.Release
		}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupAudit(t, tc.mode)
			// Exempt and NULL-status rows may share a key with an active one.
			b.insert(t, discount{1, "applied", 0}, discount{1, "revoked", 1}, discount{1, "revoked", 2}, discount{1, "", 3}, discount{2, "skipped", 0})
			db, done := tc.handle(t, b)
			res, err := pgguard.CreateIndexConcurrently(b.ctx, db, loyalty)
			require.NoError(t, err)
			require.Equal(t, pgguard.IndexResult{Created: true}, res)

			// Idempotent: the second call finds it and does nothing.
			res, err = pgguard.CreateIndexConcurrently(b.ctx, db, loyalty)
			require.NoError(t, err)
			require.Equal(t, pgguard.IndexResult{}, res)
			if c, ok := db.(*pgx.Conn); ok {
				var locks int
				require.NoError(t, c.QueryRow(b.ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`).Scan(&locks))
				require.Zero(t, locks, "the session's advisory lock is released")
			}
			done()
			b.requireGuarded(t)
		})
	}
}

// An index made by Guard.IndexDDL (or by hand, concurrently, with the same
// definition) is the guard's index: nothing to do.
func TestCreateIndexConcurrentlyAcceptsTheIndexDDLIndex(t *testing.T) {
	t.Parallel()
	ddl, err := loyalty.IndexDDL()
	require.NoError(t, err)
	for name, sql := range map[string]string{"IndexDDL": ddl, "ByHand": rawConcurrentBuild(t)} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			t.Run(name+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				b := setupAudit(t, mode)
				b.exec(t, sql)
				for range 2 {
					res, err := pgguard.CreateIndexConcurrently(b.ctx, b.pool, loyalty)
					require.NoError(t, err)
					require.Equal(t, pgguard.IndexResult{}, res)
				}
			})
		}
	}
}

func TestCreateIndexConcurrentlyRefusesDuplicatesAndLeavesNoIndex(t *testing.T) {
	t.Parallel()
	b := setupAudit(t, pgx.QueryExecModeCacheStatement)
	ids := b.insert(t,
		discount{1, "applied", 0}, discount{1, "skipped", 1},
		discount{2, "applied", 0}, discount{2, "applied", 1}, discount{2, "applied", 2},
		discount{3, "applied", 0}, discount{3, "revoked", 1})
	want, err := pgguard.Audit(b.ctx, b.pool, loyalty, nil)
	require.NoError(t, err)
	require.Len(t, want, 2)

	_, err = pgguard.CreateIndexConcurrently(b.ctx, b.pool, loyalty)
	require.ErrorIs(t, err, pgguard.ErrDuplicates)
	var de *pgguard.DuplicatesError
	require.ErrorAs(t, err, &de)
	require.Equal(t, want, de.Groups)
	require.Equal(t, "uq_loyalty_discounts_active", de.Index)
	require.Contains(t, err.Error(), "2 keys have more than one active row (5 rows)")
	exists, _, _ := b.indexState(t, loyalty.IndexName)
	require.False(t, exists, "no index is left behind")

	// Repair: keep the oldest, revoke the others; then the index builds.
	for _, g := range de.Groups {
		for _, r := range g.Rows[1:] {
			b.exec(t, `UPDATE loyalty_discounts SET status = 'revoked' WHERE id = $1`, r["id"])
		}
	}
	res, err := pgguard.CreateIndexConcurrently(b.ctx, b.pool, loyalty)
	require.NoError(t, err)
	require.Equal(t, pgguard.IndexResult{Created: true}, res)
	b.requireGuarded(t)
	var active []int64
	rows, err := b.pool.Query(b.ctx, `SELECT id FROM loyalty_discounts WHERE status IN ('applied', 'skipped') AND user_id IN (1, 2, 3) ORDER BY id`)
	require.NoError(t, err)
	active, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Equal(t, []int64{ids[0], ids[2], ids[5]}, active, "the oldest row of each key was kept")
}

// A concurrent build that failed on duplicates leaves an invalid index
// (PostgreSQL's own, not a catalog edit); CreateIndexConcurrently drops it,
// and builds again once the duplicates are gone.
func TestCreateIndexConcurrentlyRebuildsAnInvalidIndex(t *testing.T) {
	t.Parallel()
	b := setupAudit(t, pgx.QueryExecModeCacheStatement)
	ids := b.insert(t, discount{1, "applied", 0}, discount{1, "applied", 1}, discount{2, "applied", 0})
	invalid := func() {
		t.Helper()
		_, err := b.pool.Exec(b.ctx, rawConcurrentBuild(t))
		requirePgCode(t, err, pgerrcode.UniqueViolation)
		exists, valid, _ := b.indexState(t, loyalty.IndexName)
		require.True(t, exists && !valid, "the failed build left an invalid index")
	}

	// Duplicates still there: the invalid index is dropped, and none is
	// left.
	invalid()
	_, err := pgguard.CreateIndexConcurrently(b.ctx, b.pool, loyalty)
	require.ErrorIs(t, err, pgguard.ErrDuplicates)
	exists, _, _ := b.indexState(t, loyalty.IndexName)
	require.False(t, exists, "no index is left behind")

	// Repaired: the invalid index is dropped and a valid one built.
	invalid()
	b.exec(t, `UPDATE loyalty_discounts SET status = 'revoked' WHERE id = $1`, ids[1])
	res, err := pgguard.CreateIndexConcurrently(b.ctx, b.pool, loyalty)
	require.NoError(t, err)
	require.Equal(t, pgguard.IndexResult{Created: true, DroppedInvalid: true}, res)
	b.requireGuarded(t)
}

// A duplicate committed while the build runs (after the audit found none)
// makes the build fail with a unique violation: its invalid index is
// dropped and the duplicates are reported from a fresh audit.
func TestCreateIndexConcurrentlyDuplicateWrittenDuringTheBuild(t *testing.T) {
	t.Parallel()
	b := setupAudit(t, pgx.QueryExecModeCacheStatement)
	ids := b.insert(t, discount{1, "applied", 0}, discount{2, "applied", 0})

	// An open transaction that has written a duplicate: the audit cannot
	// see it, and the build waits for the transaction before it scans.
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(b.ctx) }()
	var dup int64
	require.NoError(t, tx.QueryRow(b.ctx, `INSERT INTO loyalty_discounts (user_id, promo_code, status, created_at)
		VALUES (2, 'late', 'skipped', now()) RETURNING id`).Scan(&dup))

	type result struct {
		res pgguard.IndexResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := pgguard.CreateIndexConcurrently(b.ctx, b.pool, loyalty)
		done <- result{res, err}
	}()
	schema := b.schema(t)
	require.Eventually(t, func() bool {
		var n int
		err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE 'CREATE UNIQUE INDEX CONCURRENTLY%'`, schema).Scan(&n)
		return err == nil && n == 1
	}, 30*time.Second, 5*time.Millisecond, "the build waits for the writing transaction")
	require.NoError(t, tx.Commit(b.ctx))

	r := <-done
	require.ErrorIs(t, r.err, pgguard.ErrDuplicates)
	var de *pgguard.DuplicatesError
	require.ErrorAs(t, r.err, &de)
	require.Len(t, de.Groups, 1)
	require.Equal(t, []any{int64(2)}, de.Groups[0].Key)
	require.Equal(t, []any{ids[1], dup}, []any{de.Groups[0].Rows[0]["id"], de.Groups[0].Rows[1]["id"]})
	exists, _, _ := b.indexState(t, loyalty.IndexName)
	require.False(t, exists, "the build's invalid index was dropped")
}

func TestCreateIndexConcurrentlyRefusesATransaction(t *testing.T) {
	t.Parallel()
	b := setupAudit(t, pgx.QueryExecModeCacheStatement)

	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	_, err = pgguard.CreateIndexConcurrently(b.ctx, tx, loyalty)
	require.ErrorIs(t, err, pgguard.ErrInTransaction)
	require.NoError(t, tx.Rollback(b.ctx), "nothing was sent: the transaction is not aborted")

	// A connection inside a transaction block opened by hand.
	c, err := b.pool.Acquire(b.ctx)
	require.NoError(t, err)
	defer c.Release()
	_, err = c.Exec(b.ctx, "BEGIN")
	require.NoError(t, err)
	_, err = pgguard.CreateIndexConcurrently(b.ctx, c, loyalty)
	require.ErrorIs(t, err, pgguard.ErrInTransaction)
	_, err = c.Exec(b.ctx, "ROLLBACK")
	require.NoError(t, err)

	_, err = pgguard.CreateIndexConcurrently(b.ctx, notASession{b.pool}, loyalty)
	require.ErrorIs(t, err, pgguard.ErrUnsupportedDB)
	_, err = pgguard.CreateIndexConcurrently(b.ctx, (*pgxpool.Pool)(nil), loyalty)
	require.ErrorIs(t, err, pgguard.ErrNilDB)
	_, err = pgguard.CreateIndexConcurrently(b.ctx, b.pool, pgguard.Guard{Table: "loyalty_discounts"})
	require.ErrorIs(t, err, pgguard.ErrInvalidGuard)

	exists, _, _ := b.indexState(t, loyalty.IndexName)
	require.False(t, exists)
}

// notASession wraps a pool: a DBTX whose statements may each run on
// another connection.
type notASession struct{ *pgxpool.Pool }

func TestCreateIndexConcurrentlyRefusesAnotherDefinition(t *testing.T) {
	t.Parallel()
	for name, ddl := range map[string]string{
		"OtherPredicate":  `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE status = 'applied'`,
		"StatusOrder":     `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE status IN ('skipped', 'applied')`,
		"NotPartial":      `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id)`,
		"NotUnique":       `CREATE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) WHERE status IN ('applied', 'skipped')`,
		"OtherColumns":    `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id, promo_code) WHERE status IN ('applied', 'skipped')`,
		"Descending":      `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id DESC) WHERE status IN ('applied', 'skipped')`,
		"Include":         `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) INCLUDE (id) WHERE status IN ('applied', 'skipped')`,
		"NullsNotDistinc": `CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id) NULLS NOT DISTINCT WHERE status IN ('applied', 'skipped')`,
		"OtherTable": `CREATE TABLE other_discounts (LIKE loyalty_discounts);
			CREATE UNIQUE INDEX uq_loyalty_discounts_active ON other_discounts (user_id) WHERE status IN ('applied', 'skipped')`,
		"NotAnIndex": `CREATE TABLE uq_loyalty_discounts_active (id int)`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupAudit(t, pgx.QueryExecModeCacheStatement)
			b.exec(t, ddl)
			var before string
			require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT oid::text FROM pg_class WHERE relname = 'uq_loyalty_discounts_active' AND relnamespace = current_schema()::regnamespace`).Scan(&before))

			_, err := pgguard.CreateIndexConcurrently(b.ctx, b.pool, loyalty)
			require.ErrorIs(t, err, pgguard.ErrIndexDefinition)
			var ie *pgguard.IndexDefinitionError
			require.ErrorAs(t, err, &ie)
			require.Equal(t, `CREATE UNIQUE INDEX CONCURRENTLY "uq_loyalty_discounts_active" ON "loyalty_discounts" ("user_id") WHERE "status" IN ('applied', 'skipped')`, ie.Want)
			require.Contains(t, ie.Have, "uq_loyalty_discounts_active")

			var after string
			require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT oid::text FROM pg_class WHERE relname = 'uq_loyalty_discounts_active' AND relnamespace = current_schema()::regnamespace`).Scan(&after))
			require.Equal(t, before, after, "nothing was changed")
		})
	}
}

// Deploys starting at once: the index is built once, and every caller
// returns with it valid.
func TestCreateIndexConcurrentlyConcurrentCallers(t *testing.T) {
	t.Parallel()
	b := setupAudit(t, pgx.QueryExecModeCacheStatement)
	b.insert(t, discount{1, "applied", 0}, discount{2, "applied", 0})
	const n = 4
	var (
		wg      sync.WaitGroup
		results [n]pgguard.IndexResult
		errs    [n]error
	)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = pgguard.CreateIndexConcurrently(b.ctx, b.pool, loyalty) })
	}
	wg.Wait()
	created := 0
	for i := range n {
		require.NoError(t, errs[i])
		require.False(t, results[i].DroppedInvalid)
		if results[i].Created {
			created++
		}
	}
	require.Equal(t, 1, created)
	b.requireGuarded(t)
}
