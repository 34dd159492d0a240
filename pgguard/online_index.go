package pgguard

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// IndexResult says what CreateIndexConcurrently did.
type IndexResult struct {
	// Created reports that this call built the index. False: a valid index
	// with the guard's definition was already there and nothing was done.
	Created bool
	// DroppedInvalid reports that an invalid index of the guard's name, left
	// by an earlier CREATE INDEX CONCURRENTLY that failed or was cancelled,
	// was found and dropped before the build.
	DroppedInvalid bool
}

// maxIndexRounds bounds CreateIndexConcurrently's rounds of "look at the
// catalog, act": each round either finishes or changes something (drops an
// invalid index, or builds), so more rounds only happen when others keep
// changing the index or the table's duplicates under it.
const maxIndexRounds = 4

// CreateIndexConcurrently creates the guard's unique index on a live table
// with CREATE UNIQUE INDEX CONCURRENTLY, which blocks neither reads nor
// writes while it builds. The index has the definition Guard.IndexDDL
// renders (the same columns, the same predicate), the one InsertOnce and
// Guard.OnConflictDoNothing rely on. It is safe to call at every start-up:
//
//   - A valid index of the guard's name with the guard's definition is
//     already there: nothing is done (Created false).
//   - A valid index of that name with another definition (other columns,
//     another predicate or status order, not unique, on another table), or
//     another kind of relation of that name: an *IndexDefinitionError
//     (ErrIndexDefinition), and nothing is changed.
//   - An invalid index of that name (pg_index.indisvalid false), left by an
//     earlier build that failed or was cancelled: it is dropped with DROP
//     INDEX CONCURRENTLY (DroppedInvalid true) and built again. A build of
//     it still in progress elsewhere is waited for first (LOCK TABLE ... IN
//     SHARE UPDATE EXCLUSIVE MODE, which conflicts with it); if it ends
//     valid, the first two cases apply.
//   - Before building, the table is audited (see Audit): if active rows
//     share a key, the result is a *DuplicatesError (ErrDuplicates)
//     carrying the groups, and no index is left behind.
//   - If the build itself fails with a unique violation (a duplicate
//     written while it ran), the invalid index it left is dropped and the
//     result is a *DuplicatesError from a fresh audit; if that audit finds
//     the duplicate gone already, the build is tried again.
//
// Concurrent calls for the same index (two deploys starting at once) are
// serialised by a session-level advisory lock, so the index is built once
// and the others find it valid. A call waits for the lock by polling
// pg_try_advisory_lock (up to once a second): a backend blocked in
// pg_advisory_lock would hold a snapshot, which the holder's build waits
// for, a deadlock.
//
// db must be a *pgxpool.Pool (one connection is acquired for the whole
// call), a *pgxpool.Conn or a *pgx.Conn, outside a transaction: CREATE
// INDEX CONCURRENTLY cannot run in one. A pgx.Tx, or a connection inside a
// transaction block, is refused with ErrInTransaction before anything is
// sent; any other DBTX is ErrUnsupportedDB. The advisory lock belongs to
// the session, so connect directly or through a pooler in session mode: a
// PgBouncer in transaction mode may run the lock and the unlock on
// different server connections. A table or column the database does not
// have is a *CatalogError.
//
// The build waits for every transaction that is writing to the table, and
// then for every transaction in the database whose snapshot is older than
// the build's: a long transaction anywhere delays it. ctx bounds the whole
// call, waits included; the session's statement_timeout and lock_timeout
// apply to each statement. A build that fails for another reason than a
// duplicate (cancelled, timed out, deadlocked, connection lost) returns its
// error and may leave an invalid index, which the next call drops.
// Comparing an existing index's definition with the guard's creates an
// empty temporary table and index in a transaction that is rolled back, so
// the role needs the TEMPORARY privilege on the database (PostgreSQL grants
// it to everyone by default), besides owning the table.
func CreateIndexConcurrently(ctx context.Context, db DBTX, guard Guard) (res IndexResult, err error) {
	if isNil(db) {
		return res, ErrNilDB
	}
	if err := guard.Validate(); err != nil {
		return res, err
	}
	op := "create index " + guard.IndexName + " concurrently"
	conn, release, err := session(ctx, db)
	if err != nil {
		if errors.Is(err, ErrInTransaction) || errors.Is(err, ErrUnsupportedDB) {
			return res, err
		}
		return res, wrapErr(ctx, op+": acquire a connection", err)
	}
	cat, err := readCatalog(ctx, conn, guard, op)
	if err != nil {
		release(false)
		return res, err
	}
	b := &indexBuild{conn: conn, g: guard, cat: cat, op: op}
	b.build = "CREATE UNIQUE INDEX CONCURRENTLY " + pgx.Identifier{guard.IndexName}.Sanitize() +
		" ON " + guard.table() + " (" + guard.columnList() + ")"
	if p := guard.predicate(); p != "" {
		b.build += " WHERE " + p
	}

	key := indexLockKey(cat.schema, guard.IndexName)
	if err := lockIndex(ctx, conn, key); err != nil {
		release(false)
		return res, wrapErr(ctx, op+": advisory lock", err)
	}
	defer func() {
		// Unlock even when ctx is done; a session whose lock could not be
		// released is closed rather than handed back to a pool.
		broken := false
		if !conn.IsClosed() {
			if _, uerr := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1::bigint)", key); uerr != nil {
				broken = true
				if err == nil {
					err = wrapErr(ctx, op+": advisory unlock", uerr)
				}
			}
		}
		release(broken)
	}()
	return b.run(ctx)
}

// session returns one connection outside a transaction for db, and how to
// give it back (destroy: close it first, for a pooled connection).
func session(ctx context.Context, db DBTX) (*pgx.Conn, func(destroy bool), error) {
	var (
		conn    *pgx.Conn
		release = func(bool) {}
	)
	switch d := db.(type) {
	case pgx.Tx:
		return nil, nil, ErrInTransaction
	case *pgxpool.Pool:
		c, err := d.Acquire(ctx)
		if err != nil {
			return nil, nil, err
		}
		conn = c.Conn()
		release = func(destroy bool) {
			if destroy {
				_ = c.Conn().Close(context.Background())
			}
			c.Release()
		}
	case *pgxpool.Conn:
		conn = d.Conn()
	case *pgx.Conn:
		conn = d
	default:
		return nil, nil, fmt.Errorf("%w, got %T", ErrUnsupportedDB, db)
	}
	if s := conn.PgConn().TxStatus(); s != 'I' {
		release(false)
		return nil, nil, ErrInTransaction
	}
	return conn, release, nil
}

// lockIndex takes the session-level advisory lock key, polling with
// pg_try_advisory_lock (every 10 ms at first, then less often, up to every
// second) until it is free or ctx is done. It does not wait in
// pg_advisory_lock: a backend blocked there holds a snapshot, and the
// holder's CREATE INDEX CONCURRENTLY waits for every older snapshot, so the
// two would deadlock.
func lockIndex(ctx context.Context, conn *pgx.Conn, key int64) error {
	wait := 10 * time.Millisecond
	for {
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1::bigint)", key).Scan(&ok); err != nil {
			return err
		}
		if ok {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// indexLockKey is the advisory lock key for building one index: the
// schema's and the index's names, which together name the index.
func indexLockKey(schema, index string) int64 {
	h := fnv.New64a()
	h.Write([]byte("pgguard.CreateIndexConcurrently\x00" + schema + "\x00" + index))
	return int64(h.Sum64())
}

type indexBuild struct {
	conn  *pgx.Conn
	g     Guard
	cat   *catalog
	op    string
	build string // the CREATE UNIQUE INDEX CONCURRENTLY statement
}

func (b *indexBuild) run(ctx context.Context) (IndexResult, error) {
	var res IndexResult
	for range maxIndexRounds {
		st, err := b.inspect(ctx)
		if err != nil {
			return res, err
		}
		switch {
		case !st.exists:
			if err := b.failOnDuplicates(ctx); err != nil {
				return res, err
			}
			_, err := b.conn.Exec(ctx, b.build)
			if err == nil {
				res.Created = true
				return res, nil
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				return res, wrapErr(ctx, b.op, err)
			}
			switch pgErr.Code {
			case pgerrcode.UniqueViolation:
				// A duplicate was written during the build, which left
				// an invalid index behind.
				if _, err := b.dropInvalid(ctx); err != nil {
					return res, err
				}
				if err := b.failOnDuplicates(ctx); err != nil {
					return res, err
				}
				// The duplicate is gone already: build again.
			case pgerrcode.DuplicateTable:
				// Someone else created a relation of that name since
				// inspect: look again.
			case pgerrcode.ActiveSQLTransaction:
				return res, fmt.Errorf("%w: %w", ErrInTransaction, err)
			default:
				return res, wrapErr(ctx, b.op, err)
			}
		case !st.isIndex || !st.onTable:
			return res, &IndexDefinitionError{Index: b.g.IndexName, Have: st.def, Want: b.build}
		case !st.valid:
			dropped, err := b.dropInvalid(ctx)
			if err != nil {
				return res, err
			}
			res.DroppedInvalid = res.DroppedInvalid || dropped
		default:
			same, err := b.sameDefinition(ctx, st.oid)
			if err != nil {
				return res, err
			}
			if !same {
				return res, &IndexDefinitionError{Index: b.g.IndexName, Have: st.def, Want: b.build}
			}
			return res, nil
		}
	}
	return res, fmt.Errorf("pgguard: %s: the index or the table's duplicates kept changing during %d rounds", b.op, maxIndexRounds)
}

// indexState is what the catalog says about the relation of the guard's
// index name in the table's schema.
type indexState struct {
	exists  bool
	oid     uint32
	isIndex bool
	onTable bool // an index of the guard's table
	valid   bool
	def     string // pg_get_indexdef, or what the relation is
}

func (b *indexBuild) inspect(ctx context.Context) (indexState, error) {
	st := indexState{exists: true}
	err := b.conn.QueryRow(ctx, `
		SELECT c.oid, c.relkind IN ('i', 'I'), coalesce(i.indrelid = $3::oid, false), coalesce(i.indisvalid, false),
		       CASE WHEN c.relkind IN ('i', 'I') THEN pg_get_indexdef(c.oid)
		            ELSE format('%I.%I, a relation of kind %L', n.nspname, c.relname, c.relkind) END
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_index i ON i.indexrelid = c.oid
		WHERE n.nspname = $1::text AND c.relname = $2::text`,
		b.cat.schema, b.g.IndexName, b.cat.oid).Scan(&st.oid, &st.isIndex, &st.onTable, &st.valid, &st.def)
	if errors.Is(err, pgx.ErrNoRows) {
		return indexState{}, nil
	}
	if err != nil {
		return indexState{}, wrapErr(ctx, b.op+": read the catalog", err)
	}
	return st, nil
}

// failOnDuplicates audits the table and returns a *DuplicatesError if
// active rows share a key.
func (b *indexBuild) failOnDuplicates(ctx context.Context) error {
	q, err := b.g.auditQuery(b.cat, &AuditOptions{})
	if err != nil {
		return err
	}
	groups, err := q.run(ctx, b.conn)
	if err != nil {
		return wrapErr(ctx, b.op+": audit", err)
	}
	if len(groups) > 0 {
		return &DuplicatesError{Index: b.g.IndexName, Table: b.g.displayName(), Groups: groups}
	}
	return nil
}

// dropInvalid drops the guard's index if it exists and is invalid, after
// waiting for any build of it still in progress: CREATE INDEX CONCURRENTLY
// holds the table's SHARE UPDATE EXCLUSIVE lock until it ends, so taking
// that lock waits for it, and the index's validity read afterwards is
// final. No build of the same name can start after that while the invalid
// index exists.
func (b *indexBuild) dropInvalid(ctx context.Context) (dropped bool, err error) {
	tx, err := b.conn.Begin(ctx)
	if err != nil {
		return false, wrapErr(ctx, b.op+": begin", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "LOCK TABLE "+b.g.table()+" IN SHARE UPDATE EXCLUSIVE MODE"); err != nil {
		return false, wrapErr(ctx, b.op+": wait for builds in progress", err)
	}
	var invalid bool
	err = tx.QueryRow(ctx, `
		SELECT NOT i.indisvalid
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_index i ON i.indexrelid = c.oid
		WHERE n.nspname = $1::text AND c.relname = $2::text AND i.indrelid = $3::oid`,
		b.cat.schema, b.g.IndexName, b.cat.oid).Scan(&invalid)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return false, wrapErr(ctx, b.op+": read the catalog", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, wrapErr(ctx, b.op+": commit", err)
	}
	if !invalid {
		return false, nil // gone, or valid now: the next round looks again
	}
	drop := "DROP INDEX CONCURRENTLY IF EXISTS " + pgx.Identifier{b.cat.schema, b.g.IndexName}.Sanitize()
	if _, err := b.conn.Exec(ctx, drop); err != nil {
		return false, wrapErr(ctx, b.op+": drop the invalid index", err)
	}
	return true, nil
}

// sameDefinition reports whether the index oid has the guard's definition.
// PostgreSQL normalises an index's columns and predicate when it stores
// them, so the guard's index is created on an empty temporary copy of the
// table's columns (LIKE), in a transaction that is rolled back, and the two
// are compared field by field: access method, uniqueness, key columns,
// operator classes, collations, options, expressions, predicate and NULLS
// NOT DISTINCT.
func (b *indexBuild) sameDefinition(ctx context.Context, oid uint32) (bool, error) {
	tx, err := b.conn.Begin(ctx)
	if err != nil {
		return false, wrapErr(ctx, b.op+": begin", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	probe := "CREATE UNIQUE INDEX pgguard_index_probe_idx ON pg_temp.pgguard_index_probe (" + b.g.columnList() + ")"
	if p := b.g.predicate(); p != "" {
		probe += " WHERE " + p
	}
	for _, sql := range []string{
		"CREATE TEMPORARY TABLE pgguard_index_probe (LIKE " + b.g.table() + ")",
		probe,
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return false, wrapErr(ctx, b.op+": compare definitions", err)
		}
	}
	var same bool
	err = tx.QueryRow(ctx, `
		WITH sig AS (
			SELECT i.indexrelid AS oid,
			       ROW(am.amname, i.indisunique, i.indimmediate, i.indisexclusion, i.indnatts, i.indnkeyatts,
			           to_jsonb(i) -> 'indnullsnotdistinct',
			           ARRAY(SELECT a.attname
			                 FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
			                 LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
			                 ORDER BY k.n),
			           i.indclass::oid[], i.indcollation::oid[], i.indoption::int2[],
			           pg_get_expr(i.indexprs, i.indrelid), pg_get_expr(i.indpred, i.indrelid))::text AS s
			FROM pg_index i
			JOIN pg_class c ON c.oid = i.indexrelid
			JOIN pg_am am ON am.oid = c.relam
			WHERE i.indexrelid IN ($1::oid, to_regclass('pg_temp.pgguard_index_probe_idx'))
		)
		SELECT coalesce((SELECT s FROM sig WHERE oid = $1::oid) =
		                (SELECT s FROM sig WHERE oid = to_regclass('pg_temp.pgguard_index_probe_idx')), false)`,
		oid).Scan(&same)
	if err != nil {
		return false, wrapErr(ctx, b.op+": compare definitions", err)
	}
	return same, nil
}
