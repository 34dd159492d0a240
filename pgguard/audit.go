package pgguard

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// AuditOptions says how Audit orders and shows the rows of each group. A nil
// *AuditOptions means all defaults.
type AuditOptions struct {
	// OrderBy names the columns that order a group's rows, oldest first
	// (ascending), such as []string{"created_at", "id"}. Rows equal on all
	// of them come in physical order (ctid). Empty means the table's primary
	// key, or, for a table without one, ctid alone: physical order, which
	// is insertion order only on a table whose rows were never updated or
	// moved; name a column for such tables.
	OrderBy []string

	// Columns names the columns each DuplicateRow holds. Empty means the
	// key columns, the status column and the OrderBy columns (the default
	// ones included, so ctid for a table without a primary key), each
	// once, in that order. System columns such as ctid may be named.
	Columns []string
}

// DuplicateGroup is one key whose active rows the guard's unique index
// would reject: two or more rows with the same key in an active status.
type DuplicateGroup struct {
	// Key is the shared key, one value per Guard.Columns entry, as pgx
	// decodes it into an any (int64, string, time.Time, ...).
	Key []any
	// Rows are the group's active rows, at least two, oldest first by
	// AuditOptions.OrderBy: Rows[0] is the one to keep, Rows[1:] the ones
	// to revoke or delete.
	Rows []DuplicateRow
}

// DuplicateRow is one active row of a DuplicateGroup: each column of
// AuditOptions.Columns mapped to the row's value, as pgx decodes it into an
// any (a ctid is a pgtype.TID). A column PostgreSQL reports as NULL maps to
// nil.
type DuplicateRow map[string]any

// Audit returns every group of active rows that share a key, which is what
// stops the guard's unique index from being created: the rows a repair has
// to revoke or delete, all but one per key. Groups come in key order, the
// rows of a group oldest first (see AuditOptions). No groups (nil): the
// index can be created. The index itself need not exist, and Audit writes
// nothing.
//
// A row is active as the index sees it: its status is one of
// Guard.ActiveStatuses (a NULL status is not), or any status for a guard
// without a StatusColumn. A row with a NULL in a key column is never a
// duplicate, since the index treats NULLs as distinct.
//
// It sends two statements: a catalog read, which turns a table or column the
// database does not have into a *CatalogError (matching ErrUnknownTable or
// ErrUnknownColumn), and one query, under one snapshot, that groups the
// active rows by key (GROUP BY ... HAVING count(*) > 1) and joins the
// groups back to their rows. The grouping reads only the key and status
// columns; only the duplicate rows are sorted. The table is read at most
// twice, whatever the number of duplicates, never in a nested loop over
// itself: the cost is linear in its size. A full audit reads every active
// row, so while the distinct keys fit in work_mem PostgreSQL reads the
// table sequentially into an in-memory hash, the cheapest plan; on a table
// whose keys do not, it streams them in order from an index on the key
// columns (a GroupAggregate over an index scan) instead of spilling to
// disk, when there is one. The join back is a hash join, or index lookups
// when the planner expects few duplicate keys. In a transaction (pass the
// pgx.Tx), a REPEATABLE READ one lets the repair act on exactly what Audit
// saw.
//
// Names in opts are identifiers, quoted like the guard's; a name that
// cannot be one is an *IdentifierError.
func Audit(ctx context.Context, db DBTX, guard Guard, opts *AuditOptions) ([]DuplicateGroup, error) {
	if isNil(db) {
		return nil, ErrNilDB
	}
	if err := guard.Validate(); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &AuditOptions{}
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	op := "audit " + guard.Table
	cat, err := readCatalog(ctx, db, guard, op)
	if err != nil {
		return nil, err
	}
	q, err := guard.auditQuery(cat, opts)
	if err != nil {
		return nil, err
	}
	groups, err := q.run(ctx, db)
	if err != nil {
		return nil, wrapErr(ctx, op, err)
	}
	return groups, nil
}

func (o *AuditOptions) validate() error {
	for i, c := range o.OrderBy {
		if err := checkIdent("AuditOptions.OrderBy["+strconv.Itoa(i)+"]", c); err != nil {
			return err
		}
	}
	for i, c := range o.Columns {
		if err := checkIdent("AuditOptions.Columns["+strconv.Itoa(i)+"]", c); err != nil {
			return err
		}
	}
	return nil
}

// catalog is what the catalog says about a guard's table.
type catalog struct {
	oid     uint32
	schema  string          // the table's schema, resolved through search_path when Guard.Schema is empty
	columns map[string]bool // user columns and system columns (ctid, xmin, ...)
	pkey    []string        // the primary key's columns, in key order; nil without one
}

// readCatalog reads the guard's table from the catalog and checks that every
// column the guard names exists. A name the database does not have is a
// *CatalogError; other errors are wrapped with op.
func readCatalog(ctx context.Context, db DBTX, g Guard, op string) (*catalog, error) {
	var (
		cat  catalog
		cols []string
		oid  *uint32
	)
	err := db.QueryRow(ctx, `
		SELECT c.oid, coalesce(n.nspname::text, ''),
		       ARRAY(SELECT a.attname::text FROM pg_attribute a
		             WHERE a.attrelid = c.oid AND NOT a.attisdropped),
		       ARRAY(SELECT a.attname::text
		             FROM pg_index i
		             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
		             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		             WHERE i.indrelid = c.oid AND i.indisprimary
		             ORDER BY k.n)
		FROM (SELECT to_regclass($1::text) AS oid) r
		LEFT JOIN pg_class c ON c.oid = r.oid
		LEFT JOIN pg_namespace n ON n.oid = c.relnamespace`, g.table()).Scan(&oid, &cat.schema, &cols, &cat.pkey)
	if err != nil {
		return nil, wrapErr(ctx, op+": read the catalog", err)
	}
	if oid == nil {
		return nil, &CatalogError{Table: g.displayName(), Field: "Guard.Table"}
	}
	cat.oid = *oid
	cat.columns = make(map[string]bool, len(cols))
	for _, c := range cols {
		cat.columns[c] = true
	}
	for i, c := range g.Columns {
		if err := cat.need(g, "Guard.Columns["+strconv.Itoa(i)+"]", c); err != nil {
			return nil, err
		}
	}
	if g.StatusColumn != "" {
		if err := cat.need(g, "Guard.StatusColumn", g.StatusColumn); err != nil {
			return nil, err
		}
	}
	return &cat, nil
}

func (c *catalog) need(g Guard, field, column string) error {
	if !c.columns[column] {
		return &CatalogError{Table: g.displayName(), Column: column, Field: field}
	}
	return nil
}

// displayName is the guard's table as messages show it.
func (g Guard) displayName() string {
	if g.Schema != "" {
		return g.Schema + "." + g.Table
	}
	return g.Table
}

// auditQuery is the audit statement and how to read its rows.
type auditQuery struct {
	guard   Guard
	sql     string
	columns []string // DuplicateRow's keys, in select-list order after the group number and the key
}

// auditQuery renders
//
//	SELECT d.k0, ..., t.c0, ...
//	FROM (SELECT "user_id" AS k0, "id" AS c0, ..., "created_at" AS o0, ..., ctid AS r
//	      FROM "loyalty_discounts" WHERE "status" IN ('applied', 'skipped')) AS t
//	JOIN (SELECT "user_id" AS k0
//	      FROM "loyalty_discounts" WHERE "status" IN ('applied', 'skipped') AND "user_id" IS NOT NULL
//	      GROUP BY "user_id" HAVING count(*) > 1) AS d
//	  ON t.k0 = d.k0
//	ORDER BY d.k0, ..., t.o0, ..., t.r
//
// Rows with a NULL key never join (NULL = NULL is not true), as the index
// treats NULLs as distinct; the IS NOT NULL only keeps them out of the
// grouping. Every name is quoted; the aliases are pgguard's own. Each
// group's key comes from the GROUP BY, one value per group, so the rows of
// a group carry the same bytes in d.k0, ... even when PostgreSQL deems
// different texts equal (numeric 1.0 and 1.00): run splits groups where
// those bytes change.
func (g Guard) auditQuery(cat *catalog, o *AuditOptions) (*auditQuery, error) {
	order := o.OrderBy
	if len(order) == 0 {
		order = cat.pkey
	}
	if len(order) == 0 {
		order = []string{"ctid"}
	}
	columns := o.Columns
	if len(columns) == 0 {
		columns = slices.Clone(g.Columns)
		if g.StatusColumn != "" {
			columns = append(columns, g.StatusColumn)
		}
		for _, c := range order {
			if !slices.Contains(columns, c) {
				columns = append(columns, c)
			}
		}
	}
	for i, c := range o.OrderBy {
		if err := cat.need(g, "AuditOptions.OrderBy["+strconv.Itoa(i)+"]", c); err != nil {
			return nil, err
		}
	}
	for i, c := range o.Columns {
		if err := cat.need(g, "AuditOptions.Columns["+strconv.Itoa(i)+"]", c); err != nil {
			return nil, err
		}
	}

	id := func(name string) string { return pgx.Identifier{name}.Sanitize() }
	var inner, groupSel, keys, notNull, join, outer, orderBy []string
	for i, c := range g.Columns {
		k := "k" + strconv.Itoa(i)
		inner = append(inner, id(c)+" AS "+k)
		groupSel = append(groupSel, id(c)+" AS "+k)
		keys = append(keys, id(c))
		notNull = append(notNull, id(c)+" IS NOT NULL")
		join = append(join, "t."+k+" = d."+k)
		outer = append(outer, "d."+k)
		orderBy = append(orderBy, "d."+k)
	}
	for i, c := range columns {
		a := "c" + strconv.Itoa(i)
		inner = append(inner, id(c)+" AS "+a)
		outer = append(outer, "t."+a)
	}
	for i, c := range order {
		a := "o" + strconv.Itoa(i)
		inner = append(inner, id(c)+" AS "+a)
		orderBy = append(orderBy, "t."+a)
	}
	inner = append(inner, "ctid AS r")
	orderBy = append(orderBy, "t.r")

	where, cond := "", strings.Join(notNull, " AND ")
	if p := g.predicate(); p != "" {
		where, cond = " WHERE "+p, p+" AND "+cond
	}
	sql := "SELECT " + strings.Join(outer, ", ") +
		" FROM (SELECT " + strings.Join(inner, ", ") + " FROM " + g.table() + where + ") AS t" +
		" JOIN (SELECT " + strings.Join(groupSel, ", ") + " FROM " + g.table() + " WHERE " + cond +
		" GROUP BY " + strings.Join(keys, ", ") + " HAVING count(*) > 1) AS d" +
		" ON " + strings.Join(join, " AND ") +
		" ORDER BY " + strings.Join(orderBy, ", ")
	return &auditQuery{guard: g, sql: sql, columns: columns}, nil
}

func (q *auditQuery) run(ctx context.Context, db DBTX) ([]DuplicateGroup, error) {
	rows, err := db.Query(ctx, q.sql)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	nk := len(q.guard.Columns)
	var (
		groups []DuplicateGroup
		last   []byte // the current group's key, as sent
		key    []byte
	)
	for rows.Next() {
		key = key[:0]
		for _, v := range rows.RawValues()[:nk] {
			key = binary.AppendVarint(key, int64(len(v)))
			key = append(key, v...)
		}
		vals, err := rows.Values()
		if err != nil {
			return nil, err
		}
		if len(groups) == 0 || !bytes.Equal(key, last) {
			groups = append(groups, DuplicateGroup{Key: vals[:nk:nk]})
			last = append(last[:0], key...)
		}
		row := make(DuplicateRow, len(q.columns))
		for i, c := range q.columns {
			row[c] = vals[nk+i]
		}
		cur := &groups[len(groups)-1]
		cur.Rows = append(cur.Rows, row)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return groups, nil
}
