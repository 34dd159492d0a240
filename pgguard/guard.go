package pgguard

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Guard describes a team's own domain table guarded by a partial unique
// index over its active rows, the shape of
//
//	CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id)
//	    WHERE status IN ('applied', 'skipped');
//
// which is Guard{Table: "loyalty_discounts", Columns: []string{"user_id"},
// StatusColumn: "status", ActiveStatuses: []string{"applied", "skipped"},
// IndexName: "uq_loyalty_discounts_active"}. Rows in other statuses (revoked,
// failed) are exempt, so a revoked grant does not block a new one.
//
// Every name is an identifier, always double-quoted in the SQL pgguard
// renders (so it is used exactly as given, case included); statuses are
// string literals, always quoted and escaped. A Guard is a plain value; the
// helpers validate it on every call.
type Guard struct {
	// Schema holds Table. Empty: unqualified (search_path).
	Schema string
	// Table is the domain table. Required.
	Table string
	// Columns are the index's key columns, in index order. Required.
	Columns []string
	// StatusColumn is the column the index predicate tests. Empty means the
	// index is not partial: every row is active.
	StatusColumn string
	// ActiveStatuses are the statuses the index covers (required with
	// StatusColumn), e.g. "applied" and "skipped".
	ActiveStatuses []string
	// IndexName names the unique index. Required: a unique violation
	// (SQLSTATE 23505) counts as "already there" only when PostgreSQL
	// reports this name as the violated constraint.
	IndexName string
}

// Validate reports whether g can describe a partial unique index. Errors
// match ErrInvalidGuard; those about a name are also *IdentifierError
// values matching ErrInvalidIdentifier.
func (g Guard) Validate() error {
	ident := func(field, name string) error {
		if err := checkIdent(field, name); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidGuard, err)
		}
		return nil
	}
	if g.Schema != "" {
		if err := ident("Guard.Schema", g.Schema); err != nil {
			return err
		}
	}
	if err := ident("Guard.Table", g.Table); err != nil {
		return err
	}
	if err := ident("Guard.IndexName", g.IndexName); err != nil {
		return err
	}
	if len(g.Columns) == 0 {
		return fmt.Errorf("%w: no key columns", ErrInvalidGuard)
	}
	seen := make(map[string]bool, len(g.Columns))
	for i, c := range g.Columns {
		if err := ident("Guard.Columns["+strconv.Itoa(i)+"]", c); err != nil {
			return err
		}
		if seen[c] {
			return fmt.Errorf("%w: key column %q listed twice", ErrInvalidGuard, c)
		}
		seen[c] = true
	}
	if g.StatusColumn == "" {
		if len(g.ActiveStatuses) > 0 {
			return fmt.Errorf("%w: ActiveStatuses without a StatusColumn", ErrInvalidGuard)
		}
		return nil
	}
	if err := ident("Guard.StatusColumn", g.StatusColumn); err != nil {
		return err
	}
	if len(g.ActiveStatuses) == 0 {
		return fmt.Errorf("%w: StatusColumn without ActiveStatuses", ErrInvalidGuard)
	}
	for _, s := range g.ActiveStatuses {
		switch {
		case s == "":
			return fmt.Errorf("%w: empty active status", ErrInvalidGuard)
		case strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s):
			return fmt.Errorf("%w: active status %q is not storable text (NUL or invalid UTF-8)", ErrInvalidGuard, s)
		}
	}
	return nil
}

func (g Guard) table() string {
	if g.Schema == "" {
		return pgx.Identifier{g.Table}.Sanitize()
	}
	return pgx.Identifier{g.Schema, g.Table}.Sanitize()
}

func (g Guard) columnList() string {
	cols := make([]string, len(g.Columns))
	for i, c := range g.Columns {
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	return strings.Join(cols, ", ")
}

// predicate renders the index predicate, or "" for a non-partial index.
func (g Guard) predicate() string {
	if g.StatusColumn == "" {
		return ""
	}
	lits := make([]string, len(g.ActiveStatuses))
	for i, s := range g.ActiveStatuses {
		lits[i] = quoteLiteral(s)
	}
	return pgx.Identifier{g.StatusColumn}.Sanitize() + " IN (" + strings.Join(lits, ", ") + ")"
}

// Predicate returns the index predicate, `"status" IN ('applied',
// 'skipped')`, quoted and escaped, for queries of one's own that must select
// exactly the active rows; "" for a guard without a StatusColumn.
func (g Guard) Predicate() (string, error) {
	if err := g.Validate(); err != nil {
		return "", err
	}
	return g.predicate(), nil
}

// IndexDDL returns the statement that creates the guard's index if it does
// not exist:
//
//	CREATE UNIQUE INDEX IF NOT EXISTS "uq_loyalty_discounts_active"
//	    ON "loyalty_discounts" ("user_id") WHERE "status" IN ('applied', 'skipped')
//
// An existing index of that name is left as it is, even if it differs.
func (g Guard) IndexDDL() (string, error) {
	if err := g.Validate(); err != nil {
		return "", err
	}
	ddl := "CREATE UNIQUE INDEX IF NOT EXISTS " + pgx.Identifier{g.IndexName}.Sanitize() +
		" ON " + g.table() + " (" + g.columnList() + ")"
	if p := g.predicate(); p != "" {
		ddl += " WHERE " + p
	}
	return ddl, nil
}

// OnConflictDoNothing returns `ON CONFLICT ("user_id") WHERE "status" IN
// ('applied', 'skipped') DO NOTHING`, the clause that makes an INSERT into
// the guarded table skip an active duplicate without an error (the other way
// to keep a caller's transaction usable; see InsertOnce). Its conflict
// target repeats the index's columns and predicate, as PostgreSQL needs to
// infer a partial index. Such an INSERT affects no row on a duplicate, which
// InsertOnce reports as not inserted.
func (g Guard) OnConflictDoNothing() (string, error) {
	if err := g.Validate(); err != nil {
		return "", err
	}
	clause := "ON CONFLICT (" + g.columnList() + ")"
	if p := g.predicate(); p != "" {
		clause += " WHERE " + p
	}
	return clause + " DO NOTHING", nil
}

// IsUniqueViolation reports whether err (or an error it wraps) is a unique
// violation (SQLSTATE 23505) of the named constraint or unique index. For a
// partial unique index PostgreSQL reports the index's name as the
// constraint. A violation of any other index is not a match: it is a real
// error, not "already there". An empty constraint name matches nothing.
func IsUniqueViolation(err error, constraint string) bool {
	var pgErr *pgconn.PgError
	return constraint != "" && errors.As(err, &pgErr) &&
		pgErr.Code == pgerrcode.UniqueViolation && pgErr.ConstraintName == constraint
}

// InsertResult says what InsertOnce did.
type InsertResult struct {
	// Inserted reports that the statement inserted a row. False means an
	// active row with the same key was already there: the insert hit the
	// guard's index (or was skipped by the statement's own ON CONFLICT DO
	// NOTHING).
	Inserted bool
	// RowsAffected is the statement's row count (0 when not inserted).
	RowsAffected int64
}

// InsertOnce runs sql, the caller's INSERT into the guarded table, and
// treats a unique violation of guard.IndexName as "already there":
// InsertResult{Inserted: false} and a nil error. Every other error,
// including a unique violation of another index or constraint, is returned
// (wrapped; inspect it with errors.As and *pgconn.PgError).
//
// With a pool or connection the INSERT is the only statement. With a pgx.Tx
// it runs inside a savepoint (SAVEPOINT, INSERT, RELEASE or ROLLBACK TO), so
// a collapsed duplicate leaves the caller's transaction usable instead of
// aborted (SQLSTATE 25P02). Inside a transaction, always pass the pgx.Tx,
// not the connection it runs on.
//
// The index, not this function, is the guard: it is correct under any
// concurrency, and a pre-flight Exists is only an optimisation.
func InsertOnce(ctx context.Context, db DBTX, guard Guard, sql string, args ...any) (InsertResult, error) {
	return insertOnce(ctx, db, guard, func(db DBTX) (int64, error) {
		tag, err := db.Exec(ctx, sql, args...)
		return tag.RowsAffected(), err
	})
}

// InsertOnceRow is InsertOnce for an INSERT ... RETURNING: when a row is
// inserted, the returned row is scanned into dest. When the row was already
// there, dest is untouched; read the existing row with FetchActive if
// needed.
func InsertOnceRow(ctx context.Context, db DBTX, guard Guard, dest []any, sql string, args ...any) (InsertResult, error) {
	return insertOnce(ctx, db, guard, func(db DBTX) (int64, error) {
		err := db.QueryRow(ctx, sql, args...).Scan(dest...)
		if errors.Is(err, pgx.ErrNoRows) { // ON CONFLICT DO NOTHING skipped it
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		return 1, nil
	})
}

func insertOnce(ctx context.Context, db DBTX, g Guard, insert func(DBTX) (int64, error)) (InsertResult, error) {
	if isNil(db) {
		return InsertResult{}, ErrNilDB
	}
	if err := g.Validate(); err != nil {
		return InsertResult{}, err
	}
	run := func(db DBTX) (InsertResult, error) {
		n, err := insert(db)
		if err != nil {
			if IsUniqueViolation(err, g.IndexName) {
				return InsertResult{}, nil
			}
			return InsertResult{}, fmt.Errorf("pgguard: insert once into %s: %w", g.Table, err)
		}
		return InsertResult{Inserted: n > 0, RowsAffected: n}, nil
	}
	tx, ok := db.(pgx.Tx)
	if !ok {
		return run(db)
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return InsertResult{}, fmt.Errorf("pgguard: insert once into %s: savepoint: %w", g.Table, err)
	}
	res, err := run(sp)
	if err != nil || !res.Inserted {
		// Roll back to the savepoint: after a 23505 the transaction is
		// aborted until we do.
		if rbErr := sp.Rollback(context.WithoutCancel(ctx)); rbErr != nil && err == nil {
			return InsertResult{}, fmt.Errorf("pgguard: insert once into %s: rollback to savepoint: %w", g.Table, rbErr)
		}
		return res, err
	}
	if err := sp.Commit(ctx); err != nil {
		return InsertResult{}, fmt.Errorf("pgguard: insert once into %s: release savepoint: %w", g.Table, err)
	}
	return res, nil
}

// keyWhere renders `"c1" = $1 AND "c2" = $2 AND <predicate>`.
func (g Guard) keyWhere(op func(i int) string) string {
	conds := make([]string, 0, len(g.Columns)+1)
	for i, c := range g.Columns {
		conds = append(conds, pgx.Identifier{c}.Sanitize()+op(i))
	}
	if p := g.predicate(); p != "" {
		conds = append(conds, p)
	}
	return strings.Join(conds, " AND ")
}

func (g Guard) checkKey(key []any) error {
	if err := g.Validate(); err != nil {
		return err
	}
	if len(key) != len(g.Columns) {
		return fmt.Errorf("%w: %d key values for %d key columns", ErrInvalidGuard, len(key), len(g.Columns))
	}
	return nil
}

func eqParam(i int) string { return " = $" + strconv.Itoa(i+1) }

// Exists reports whether an active row (one the guard's index covers) has
// the given key, one value per key column in order. One query. It is a
// pre-flight check that saves a provider call for work already done; it
// never replaces the index (another worker may insert right after it).
func Exists(ctx context.Context, db DBTX, guard Guard, key ...any) (bool, error) {
	if isNil(db) {
		return false, ErrNilDB
	}
	if err := guard.checkKey(key); err != nil {
		return false, err
	}
	var ok bool
	sql := "SELECT EXISTS (SELECT FROM " + guard.table() + " WHERE " + guard.keyWhere(eqParam) + ")"
	if err := db.QueryRow(ctx, sql, key...).Scan(&ok); err != nil {
		return false, fmt.Errorf("pgguard: exists in %s: %w", guard.Table, err)
	}
	return ok, nil
}

// FetchActive reads columns of the active row with the given key into dest
// (one value per column), for a caller that met "already there" and wants
// the existing row (its promotion code, say). It reports false, leaving
// dest untouched, when there is no active row: the row may have been
// revoked since, or, inside a REPEATABLE READ transaction, committed after
// the transaction's snapshot.
func FetchActive(ctx context.Context, db DBTX, guard Guard, columns []string, dest []any, key ...any) (bool, error) {
	if isNil(db) {
		return false, ErrNilDB
	}
	if err := guard.checkKey(key); err != nil {
		return false, err
	}
	if len(columns) == 0 || len(columns) != len(dest) {
		return false, fmt.Errorf("%w: %d columns for %d destinations", ErrInvalidGuard, len(columns), len(dest))
	}
	cols := make([]string, len(columns))
	for i, c := range columns {
		if err := checkIdent("FetchActive column", c); err != nil {
			return false, err
		}
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	sql := "SELECT " + strings.Join(cols, ", ") + " FROM " + guard.table() + " WHERE " + guard.keyWhere(eqParam) + " LIMIT 1"
	err := db.QueryRow(ctx, sql, key...).Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("pgguard: fetch active from %s: %w", guard.Table, err)
	}
	return true, nil
}

// ExistingKeys returns which of keys have an active row, in one query
// whatever their number ("c" = ANY($1)), for sweeps that pre-flight a whole
// batch of candidates. The map holds only keys that exist.
//
// For a one-column guard, K is the column's Go type (int64, string, ...).
// For a guard with several key columns, K is a struct whose fields are all
// exported, one per key column, in column order (scanned by position); the
// query then matches each column against its own list and the result is
// narrowed to the exact tuples asked for.
func ExistingKeys[K comparable](ctx context.Context, db DBTX, guard Guard, keys []K) (map[K]bool, error) {
	if isNil(db) {
		return nil, ErrNilDB
	}
	if err := guard.Validate(); err != nil {
		return nil, err
	}
	out := make(map[K]bool)
	if len(keys) == 0 {
		return out, nil
	}
	args, err := keyArrays(guard, keys)
	if err != nil {
		return nil, err
	}
	sql := "SELECT " + guard.columnList() + " FROM " + guard.table() + " WHERE " +
		guard.keyWhere(func(i int) string { return " = ANY($" + strconv.Itoa(i+1) + ")" })
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("pgguard: existing keys in %s: %w", guard.Table, err)
	}
	var scan pgx.RowToFunc[K] = pgx.RowTo[K]
	if len(guard.Columns) > 1 {
		scan = pgx.RowToStructByPos[K]
	}
	found, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, fmt.Errorf("pgguard: existing keys in %s: %w", guard.Table, err)
	}
	asked := make(map[K]bool, len(keys))
	for _, k := range keys {
		asked[k] = true
	}
	for _, k := range found {
		if asked[k] {
			out[k] = true
		}
	}
	return out, nil
}

// keyArrays turns keys into one array argument per key column: the keys
// themselves for one column, the struct fields' values (as typed slices)
// for several.
func keyArrays[K comparable](g Guard, keys []K) ([]any, error) {
	if len(g.Columns) == 1 {
		return []any{keys}, nil
	}
	t := reflect.TypeFor[K]()
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: %d key columns need a struct key type, got %s", ErrInvalidGuard, len(g.Columns), t)
	}
	if t.NumField() != len(g.Columns) {
		return nil, fmt.Errorf("%w: key type %s has %d fields for %d key columns", ErrInvalidGuard, t, t.NumField(), len(g.Columns))
	}
	args := make([]any, t.NumField())
	for f := range t.NumField() {
		if !t.Field(f).IsExported() {
			return nil, fmt.Errorf("%w: key type %s has an unexported field %s", ErrInvalidGuard, t, t.Field(f).Name)
		}
		s := reflect.MakeSlice(reflect.SliceOf(t.Field(f).Type), len(keys), len(keys))
		for i, k := range keys {
			s.Index(i).Set(reflect.ValueOf(k).Field(f))
		}
		args[f] = s.Interface()
	}
	return args, nil
}
