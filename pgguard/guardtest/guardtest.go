package guardtest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/effectonce/effectonce/pgguard"
)

// TB is the part of testing.TB that Check uses; *testing.T satisfies it.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
}

// Table describes a team's guarded domain table and how to write rows into
// it.
type Table struct {
	// Guard is the guard the team's code uses, exactly as production
	// builds it. Check compares it with what the catalog says; it trusts
	// none of it.
	Guard pgguard.Guard

	// Migrate creates the table and its indexes: the team's own migration,
	// run once on the db given to Check (not in a transaction of Check's,
	// so CREATE INDEX CONCURRENTLY works when db is a pool). Nil when the
	// table already exists (created by the team's migration tool).
	Migrate func(ctx context.Context, db pgguard.DBTX) error

	// Row returns an INSERT of one row with the given key values (one per
	// Guard.Columns entry, in order) and status ("" for a guard without a
	// StatusColumn), for example
	//
	//	func(key []any, status string) (string, []any) {
	//		n++
	//		return `INSERT INTO loyalty_discounts (user_id, status, promo_code) VALUES ($1, $2, $3)`,
	//			[]any{key[0], status, fmt.Sprintf("promo_%d", n)}
	//	}
	//
	// Every call must give the table's other unique columns fresh values
	// (a counter), so that two rows can only clash through the guard's
	// index, and must satisfy the table's other constraints (foreign keys
	// included: insert what they reference in Migrate).
	Row func(key []any, status string) (sql string, args []any)

	// Key returns the i-th key, one value per Guard.Columns entry: a
	// different key for every i (0, 1, 2, ...), none of them in the table
	// already.
	Key func(i int) []any

	// ExemptStatuses are statuses the index must not cover, such as
	// revoked and failed: a row in one of them must never block a new
	// active row. Required with a StatusColumn, except for an enum status
	// column, where empty means every label that is not active.
	ExemptStatuses []string
}

// Check runs the table's migration on db and checks the contract a guarded
// table must meet for pgguard.InsertOnce and its helpers to keep an effect
// exactly once:
//
//   - The catalog has a valid, immediate UNIQUE index named
//     Guard.IndexName on the table, over exactly Guard.Columns (in any
//     order; NOT NULL, or NULLS NOT DISTINCT), whose predicate covers exactly
//     Guard.ActiveStatuses (and which is not partial for a guard without a
//     StatusColumn).
//   - A row in each exempt status does not block a new active row for its
//     key, and a second exempt row for one key is allowed (a key granted
//     and revoked twice).
//   - A duplicate active row, in every active status, collapses through
//     pgguard.InsertOnce with no error and Inserted false, leaving exactly
//     one active row.
//   - A unique violation of any other unique index (the primary key, a
//     unique promotion code) is still an error. Check provokes one by
//     copying a row under a new key, or under an exempt status; when
//     neither copy clashes with another unique index, it says so with
//     Logf and skips this check.
//
// t is usually a *testing.T; failures name the broken rule. Check returns
// false if any rule was broken.
//
// db should reach a throwaway schema or database: Migrate runs on it and
// its DDL stays. Every row Check writes is rolled back (each check runs in
// a transaction of its own, a savepoint when db is a pgx.Tx), so the table
// is left as Migrate made it. Passing a pgx.Tx that the test rolls back
// afterwards makes the migration throwaway too, for migrations that run in
// a transaction.
func Check(t TB, db pgguard.DBTX, tbl Table) bool {
	t.Helper()
	c := &checker{t: t, db: db, tbl: tbl, g: tbl.Guard, ctx: context.Background(), ok: true, keys: map[string]int{}}
	if !c.valid() {
		return false
	}
	if tbl.Migrate != nil {
		if err := tbl.Migrate(c.ctx, db); err != nil {
			c.fail("Migrate: %v", err)
			return false
		}
	}
	if !c.readCatalog() {
		return false
	}
	c.checkIndex()
	c.checkExempt()
	c.checkDuplicates()
	c.checkOtherViolations()
	return c.ok
}

type checker struct {
	t   TB
	db  pgguard.DBTX
	tbl Table
	g   pgguard.Guard
	ctx context.Context
	ok  bool

	nextKey int
	keys    map[string]int // key (formatted) -> i

	cols   []column
	index  index
	others []index // the table's other unique indexes
	exempt []string
}

func (c *checker) fail(format string, args ...any) {
	c.t.Helper()
	c.ok = false
	c.t.Errorf("guardtest: "+format, args...)
}

func (c *checker) valid() bool {
	c.t.Helper()
	if c.db == nil || isNilPointer(c.db) {
		c.fail("nil db")
		return false
	}
	if err := c.g.Validate(); err != nil {
		c.fail("Table.Guard: %v", err)
		return false
	}
	if c.tbl.Row == nil || c.tbl.Key == nil {
		c.fail("Table needs Row and Key")
		return false
	}
	if c.g.StatusColumn == "" && len(c.tbl.ExemptStatuses) > 0 {
		c.fail("Table.ExemptStatuses is set but the guard has no StatusColumn")
		return false
	}
	for _, s := range c.tbl.ExemptStatuses {
		if slices.Contains(c.g.ActiveStatuses, s) {
			c.fail("Table.ExemptStatuses lists %q, an active status", s)
			return false
		}
	}
	return true
}

func isNilPointer(db pgguard.DBTX) bool {
	v := reflect.ValueOf(db)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// tableName is the guard's table as the messages show it.
func (c *checker) tableName() string {
	if c.g.Schema != "" {
		return c.g.Schema + "." + c.g.Table
	}
	return c.g.Table
}

// table is the guard's table, quoted for SQL.
func (c *checker) table() string {
	if c.g.Schema != "" {
		return pgx.Identifier{c.g.Schema, c.g.Table}.Sanitize()
	}
	return pgx.Identifier{c.g.Table}.Sanitize()
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func (c *checker) readCatalog() bool {
	c.t.Helper()
	cols, idx, ok, err := readTable(c.ctx, c.db, c.table())
	if err != nil {
		c.fail("reading the catalog for table %s: %v", c.tableName(), err)
		return false
	}
	if !ok {
		c.fail("table %s does not exist (did Migrate create it, in a schema on db's search_path?)", c.tableName())
		return false
	}
	c.cols = cols

	found := false
	var unique []string
	for _, ix := range idx {
		switch {
		case ix.name == c.g.IndexName:
			c.index, found = ix, true
		case ix.unique:
			c.others = append(c.others, ix)
			unique = append(unique, ix.name+" "+ix.keyList())
		}
	}
	if !found {
		has := "it has no unique index"
		if len(unique) > 0 {
			has = "its unique indexes: " + strings.Join(unique, ", ")
		}
		c.fail("no unique index named %s on table %s (%s)", c.g.IndexName, c.tableName(), has)
		return false
	}

	if c.g.StatusColumn == "" {
		return true
	}
	i := slices.IndexFunc(cols, func(col column) bool { return col.name == c.g.StatusColumn })
	if i < 0 {
		c.fail("table %s has no column %s (Guard.StatusColumn)", c.tableName(), c.g.StatusColumn)
		return false
	}
	c.exempt = c.tbl.ExemptStatuses
	if len(c.exempt) == 0 && cols[i].enumOID != 0 {
		labels, err := enumLabels(c.ctx, c.db, cols[i].enumOID)
		if err != nil {
			c.fail("reading the labels of %s's type %s: %v", c.g.StatusColumn, cols[i].typ, err)
			return false
		}
		for _, l := range labels {
			if !slices.Contains(c.g.ActiveStatuses, l) {
				c.exempt = append(c.exempt, l)
			}
		}
		if len(c.exempt) == 0 {
			c.fail("every label of %s's enum type %s is active: there is no exempt status, so nothing can ever re-open a key", c.g.StatusColumn, cols[i].typ)
			return false
		}
	}
	if len(c.exempt) == 0 {
		c.fail("Table.ExemptStatuses is empty: name the statuses index %s must not cover (revoked, failed, ...)", c.g.IndexName)
		return false
	}
	return true
}

func (c *checker) checkIndex() {
	c.t.Helper()
	ix := c.index
	if !ix.unique {
		c.fail("index %s on table %s is not unique: any number of active rows may share a key (it must be a CREATE UNIQUE INDEX); %s", ix.name, c.tableName(), ix.def)
	}
	if !ix.valid {
		c.fail("index %s on table %s is invalid (left by a failed CREATE INDEX CONCURRENTLY?): it may already hold duplicates and ON CONFLICT ignores it; drop it and create it again", ix.name, c.tableName())
	}
	if !ix.immediate {
		c.fail("index %s on table %s backs a DEFERRABLE constraint: a duplicate is reported at COMMIT, not by the INSERT, so InsertOnce cannot collapse it", ix.name, c.tableName())
	}

	want := slices.Sorted(slices.Values(c.g.Columns))
	got := slices.Sorted(slices.Values(ix.keys))
	if !slices.Equal(want, got) || slices.Contains(ix.keyIsExpr, true) {
		c.fail("index %s on table %s is over %s but the guard's key columns are (%s)", ix.name, c.tableName(), ix.keyList(), strings.Join(c.g.Columns, ", "))
	} else if !ix.nullsNotDistinct() {
		for i, k := range ix.keys {
			if !ix.keyNotNul[i] {
				c.fail("key column %s of table %s is nullable and index %s treats NULLs as distinct: any number of active rows with a NULL %s may coexist; declare it NOT NULL (or the index NULLS NOT DISTINCT)", k, c.tableName(), ix.name, k)
			}
		}
	}

	if c.g.StatusColumn == "" {
		if ix.pred != "" {
			c.fail("index %s is partial (WHERE %s) but the guard has no StatusColumn: rows outside the predicate are not guarded; %s", ix.name, ix.pred, ix.def)
		}
		return
	}
	if ix.pred == "" {
		c.fail("index %s is not partial: a %s row would block a new one forever (the index must cover only %v); %s", ix.name, c.exempt[0], c.g.ActiveStatuses, ix.def)
		return
	}
	col, covered, err := readPredicate(ix.pred)
	if err != nil {
		c.fail("index %s's predicate has a shape guardtest cannot read (%v); write it as %s IN (...) over the active statuses: %s", ix.name, err, ident(c.g.StatusColumn), ix.def)
		return
	}
	if col != c.g.StatusColumn {
		c.fail("index %s's predicate tests column %s, not the guard's status column %s: %s", ix.name, col, c.g.StatusColumn, ix.def)
		return
	}
	var missing, extra []string
	for _, s := range c.g.ActiveStatuses {
		if !slices.Contains(covered, s) {
			missing = append(missing, s)
		}
	}
	for _, s := range covered {
		if !slices.Contains(c.g.ActiveStatuses, s) {
			extra = append(extra, s)
		}
	}
	if len(missing) == 0 && len(extra) == 0 {
		return
	}
	var why []string
	if len(missing) > 0 {
		why = append(why, fmt.Sprintf("not covered: %v, so rows in those statuses do not block a duplicate", missing))
	}
	if len(extra) > 0 {
		why = append(why, fmt.Sprintf("covered but not active: %v, so rows in those statuses block a new one although the guard's helpers ignore them", extra))
	}
	c.fail("index %s's predicate covers %v but the active statuses are %v (%s)", ix.name, covered, c.g.ActiveStatuses, strings.Join(why, "; "))
}

// key returns the next key from Table.Key, checking its length and that it
// is new.
func (c *checker) key() ([]any, bool) {
	c.t.Helper()
	i := c.nextKey
	c.nextKey++
	k := c.tbl.Key(i)
	if len(k) != len(c.g.Columns) {
		c.fail("Table.Key(%d) returned %d values for the %d key columns (%s)", i, len(k), len(c.g.Columns), strings.Join(c.g.Columns, ", "))
		return nil, false
	}
	s := fmt.Sprintf("%#v", k)
	if j, dup := c.keys[s]; dup {
		c.fail("Table.Key(%d) and Table.Key(%d) are the same key %v: Key must return a different key for every i", j, i, k)
		return nil, false
	}
	c.keys[s] = i
	return k, true
}

// inTx runs f in a transaction (a savepoint when db is a pgx.Tx) that is
// rolled back afterwards.
func (c *checker) inTx(f func(tx pgx.Tx)) {
	c.t.Helper()
	tx, err := c.db.Begin(c.ctx)
	if err != nil {
		c.fail("begin: %v", err)
		return
	}
	defer func() {
		if err := tx.Rollback(c.ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
			c.fail("rollback: %v", err)
		}
	}()
	f(tx)
}

// active is the statuses an active row may have: "" for a guard without a
// StatusColumn (every row is active).
func (c *checker) active() []string {
	if c.g.StatusColumn == "" {
		return []string{""}
	}
	return c.g.ActiveStatuses
}

// what names a row in a status for the messages.
func what(status string) string {
	if status == "" {
		return "row"
	}
	return fmt.Sprintf("row with status %q", status)
}

func violated(err error) (constraint string, ok bool) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UniqueViolation {
		return pgErr.ConstraintName, true
	}
	return "", false
}

// rowFailed reports a Table.Row insert that should have worked.
func (c *checker) rowFailed(doing string, key []any, status string, err error) {
	c.t.Helper()
	hint := ""
	if con, ok := violated(err); ok && con != c.g.IndexName {
		hint = fmt.Sprintf(" (it violates %s, not %s: Table.Row must give every row fresh values for the table's other unique columns)", con, c.g.IndexName)
	}
	c.fail("%s: Table.Row(%v, %q): %v%s", doing, key, status, err, hint)
}

func (c *checker) checkExempt() {
	c.t.Helper()
	for _, s := range c.exempt {
		c.inTx(func(tx pgx.Tx) {
			k, ok := c.key()
			if !ok {
				return
			}
			sql, args := c.tbl.Row(k, s)
			if _, err := tx.Exec(c.ctx, sql, args...); err != nil {
				c.rowFailed("inserting a "+what(s), k, s, err)
				return
			}
			a := c.g.ActiveStatuses[0]
			sql, args = c.tbl.Row(k, a)
			res, err := pgguard.InsertOnce(c.ctx, tx, c.g, sql, args...)
			switch {
			case err != nil:
				c.rowFailed(fmt.Sprintf("inserting a %s for a key with a %s", what(a), what(s)), k, a, err)
				return
			case !res.Inserted:
				c.fail("a %s blocks a new %s for the same key %v (InsertOnce reported it already there): index %s must not cover %q", what(s), what(a), k, c.g.IndexName, s)
				return
			}
			// Granted, revoked, granted again and revoked again: two
			// exempt rows for one key.
			sql, args = c.tbl.Row(k, s)
			if _, err := tx.Exec(c.ctx, sql, args...); err != nil {
				c.fail("a second %s for key %v was refused: %v; a key granted and revoked twice has two such rows, so no unique index may cover status %q", what(s), k, err, s)
			}
		})
	}
}

func (c *checker) checkDuplicates() {
	c.t.Helper()
	for _, a := range c.active() {
		c.inTx(func(tx pgx.Tx) {
			k, ok := c.key()
			if !ok {
				return
			}
			sql, args := c.tbl.Row(k, a)
			res, err := pgguard.InsertOnce(c.ctx, tx, c.g, sql, args...)
			if err != nil {
				c.rowFailed("inserting the first "+what(a)+" for a new key", k, a, err)
				return
			}
			if !res.Inserted {
				c.fail("the first %s for the new key %v was not inserted (InsertOnce reported it already there): is that key in the table already?", what(a), k)
				return
			}
			for _, b := range c.active() {
				sql, args := c.tbl.Row(k, b)
				res, err := pgguard.InsertOnce(c.ctx, tx, c.g, sql, args...)
				if err != nil {
					if con, ok := violated(err); ok {
						c.fail("a duplicate %s for key %v (which has an active %s) violated %s, not %s: Table.Row must give every row fresh values for the table's other unique columns", what(b), k, what(a), con, c.g.IndexName)
					} else {
						c.fail("a duplicate %s for key %v (which has an active %s) returned an error instead of collapsing: %v", what(b), k, what(a), err)
					}
					return
				}
				if res.Inserted {
					c.fail("a duplicate %s for key %v was inserted next to its active %s: index %s must refuse it, and InsertOnce report it already there", what(b), k, what(a), c.g.IndexName)
					return
				}
			}
			n, err := c.activeRows(tx, k)
			if err != nil {
				c.fail("counting the active rows of key %v: %v", k, err)
			} else if n != 1 {
				c.fail("after duplicate inserts, key %v has %d active rows, want exactly 1", k, n)
			}
		})
	}
}

// activeRows counts the rows with the key whose status is active.
func (c *checker) activeRows(tx pgx.Tx, key []any) (int, error) {
	conds, args := c.keyWhere(key)
	if c.g.StatusColumn != "" {
		args = append(args, c.g.ActiveStatuses)
		conds = append(conds, ident(c.g.StatusColumn)+"::text = ANY($"+strconv.Itoa(len(args))+"::text[])")
	}
	var n int
	err := tx.QueryRow(c.ctx, "SELECT count(*) FROM "+c.table()+" WHERE "+strings.Join(conds, " AND "), args...).Scan(&n)
	return n, err
}

func (c *checker) keyWhere(key []any) ([]string, []any) {
	conds := make([]string, len(c.g.Columns))
	for i, col := range c.g.Columns {
		conds[i] = ident(col) + " = $" + strconv.Itoa(i+1)
	}
	return conds, slices.Clone(key)
}

// checkOtherViolations provokes a unique violation of another index of
// the table than the guard's and checks that InsertOnce returns it as an
// error rather than "already there".
func (c *checker) checkOtherViolations() {
	c.t.Helper()
	if len(c.others) == 0 {
		c.t.Logf("guardtest: table %s has no unique index besides %s: no other unique violation to provoke", c.tableName(), c.g.IndexName)
		return
	}
	c.inTx(func(tx pgx.Tx) {
		k, ok := c.key()
		if !ok {
			return
		}
		a := c.active()[0]
		sql, args := c.tbl.Row(k, a)
		if _, err := tx.Exec(c.ctx, sql, args...); err != nil {
			c.rowFailed("inserting a "+what(a), k, a, err)
			return
		}
		// Copy that row so that it escapes the guard's index but keeps
		// every other column: under a new key, then under an exempt status.
		var copies []map[string]any
		if k2, ok := c.key(); ok {
			m := map[string]any{}
			for i, col := range c.g.Columns {
				m[col] = k2[i]
			}
			copies = append(copies, m)
		}
		if len(c.exempt) > 0 {
			copies = append(copies, map[string]any{c.g.StatusColumn: c.exempt[0]})
		}
		for _, set := range copies {
			sql, args := c.copyRow(k, a, set)
			probe, err := tx.Begin(c.ctx)
			if err != nil {
				c.fail("savepoint: %v", err)
				return
			}
			_, err = probe.Exec(c.ctx, sql, args...)
			if rbErr := probe.Rollback(c.ctx); rbErr != nil {
				c.fail("rollback to savepoint: %v", rbErr)
				return
			}
			con, isUnique := violated(err)
			if err == nil || !isUnique || con == c.g.IndexName {
				continue // no clash with another index (or the guard's own index is broken, reported above)
			}
			res, err := pgguard.InsertOnce(c.ctx, tx, c.g, sql, args...)
			switch {
			case err == nil:
				c.fail("a unique violation of %s (not the guard's index %s) was reported as already there (Inserted=%v): it must be returned as an error", con, c.g.IndexName, res.Inserted)
			case !pgguard.IsUniqueViolation(err, con):
				c.fail("a row violating %s made InsertOnce return %v, want that unique violation", con, err)
			}
			return
		}
		names := make([]string, len(c.others))
		for i, ix := range c.others {
			names[i] = ix.name
		}
		c.t.Logf("guardtest: could not provoke a violation of another unique index of %s (%s) by copying a row under a new key or an exempt status: that check was skipped",
			c.tableName(), strings.Join(names, ", "))
	})
}

// copyRow returns an INSERT that copies the row with the key and status,
// replacing the columns in set, identity columns included (OVERRIDING
// SYSTEM VALUE) and generated ones recomputed.
func (c *checker) copyRow(key []any, status string, set map[string]any) (string, []any) {
	conds, args := c.keyWhere(key)
	if c.g.StatusColumn != "" {
		args = append(args, status)
		conds = append(conds, ident(c.g.StatusColumn)+"::text = $"+strconv.Itoa(len(args))+"::text")
	}
	var names, exprs []string
	for _, col := range c.cols {
		if col.generated {
			continue
		}
		names = append(names, ident(col.name))
		v, ok := set[col.name]
		if !ok {
			exprs = append(exprs, ident(col.name))
			continue
		}
		args = append(args, v)
		p := "$" + strconv.Itoa(len(args))
		if col.name == c.g.StatusColumn {
			p += "::text" // a status is a Go string, whatever the column's type
		}
		exprs = append(exprs, p+"::"+col.typ)
	}
	return "INSERT INTO " + c.table() + " (" + strings.Join(names, ", ") + ") OVERRIDING SYSTEM VALUE SELECT " +
		strings.Join(exprs, ", ") + " FROM " + c.table() + " WHERE " + strings.Join(conds, " AND ") + " LIMIT 1", args
}
