package guardtest

import (
	"context"
	"fmt"
	"strings"

	"github.com/effectonce/effectonce/pgguard"
)

// index is one index of the table, as the catalog describes it.
type index struct {
	name      string
	unique    bool
	valid     bool // false: left by a failed CREATE INDEX CONCURRENTLY
	immediate bool // false: backs a DEFERRABLE constraint
	def       string
	pred      string // "" for an index that is not partial
	keys      []string
	keyIsExpr []bool
	keyNotNul []bool
}

// keyList renders the index's key as "(a, lower(b))".
func (ix index) keyList() string { return "(" + strings.Join(ix.keys, ", ") + ")" }

func (ix index) nullsNotDistinct() bool { return strings.Contains(ix.def, " NULLS NOT DISTINCT") }

// column is one column of the table.
type column struct {
	name      string
	typ       string // format_type, usable in a cast
	generated bool   // GENERATED ALWAYS AS (...) STORED: cannot be inserted
	enumOID   uint32 // non-zero for an enum type
}

// readTable reads the table's columns and indexes. ok is false when the
// table does not exist.
func readTable(ctx context.Context, db pgguard.DBTX, regclass string) (cols []column, idx []index, ok bool, err error) {
	if err := db.QueryRow(ctx, `SELECT to_regclass($1::text) IS NOT NULL`, regclass).Scan(&ok); err != nil || !ok {
		return nil, nil, false, err
	}
	rows, err := db.Query(ctx, `
		SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',
		       CASE WHEN t.typtype = 'e' THEN t.oid ELSE 0 END::oid
		FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, regclass)
	if err != nil {
		return nil, nil, false, err
	}
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.name, &c.typ, &c.generated, &c.enumOID); err != nil {
			rows.Close()
			return nil, nil, false, err
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, false, err
	}

	// Key columns only (not INCLUDE ones): the column's name, or the
	// expression's text for an expression key.
	rows, err = db.Query(ctx, `
		SELECT c.relname::text, i.indisunique, i.indisvalid, i.indimmediate,
		       pg_get_indexdef(i.indexrelid), coalesce(pg_get_expr(i.indpred, i.indrelid), ''),
		       ARRAY(SELECT CASE WHEN k.attnum = 0 THEN pg_get_indexdef(i.indexrelid, k.n::int, true)
		                         ELSE a.attname::text END
		             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
		             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		             WHERE k.n <= i.indnkeyatts ORDER BY k.n),
		       ARRAY(SELECT k.attnum = 0
		             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
		             WHERE k.n <= i.indnkeyatts ORDER BY k.n),
		       ARRAY(SELECT coalesce(a.attnotnull, false)
		             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
		             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		             WHERE k.n <= i.indnkeyatts ORDER BY k.n)
		FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE i.indrelid = to_regclass($1::text)
		ORDER BY c.relname`, regclass)
	if err != nil {
		return nil, nil, false, err
	}
	defer rows.Close()
	for rows.Next() {
		var ix index
		if err := rows.Scan(&ix.name, &ix.unique, &ix.valid, &ix.immediate, &ix.def, &ix.pred,
			&ix.keys, &ix.keyIsExpr, &ix.keyNotNul); err != nil {
			return nil, nil, false, err
		}
		idx = append(idx, ix)
	}
	return cols, idx, true, rows.Err()
}

// enumLabels returns an enum type's labels in their order.
func enumLabels(ctx context.Context, db pgguard.DBTX, oid uint32) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1::oid ORDER BY enumsortorder`, oid)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read enum labels: %w", err)
	}
	return out, nil
}
