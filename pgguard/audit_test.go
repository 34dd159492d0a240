package pgguard_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/internal/pgcount"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// The seed's table before its index existed: nothing stops two active rows
// per user, and the status may be NULL (which is not active).
const unguardedDiscounts = `CREATE TABLE loyalty_discounts (
	id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	user_id    bigint      NOT NULL,
	promo_code text        NOT NULL CONSTRAINT loyalty_discounts_promo_code_key UNIQUE,
	status     text,
	created_at timestamptz NOT NULL
)`

// t0 is the audits' clock: row times are offsets from it, so the oldest row
// of a group is not always the one inserted first.
var t0 = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// discount is one row of unguardedDiscounts; status "" is NULL.
type discount struct {
	user   int64
	status string
	at     int // minutes after t0
}

type auditBundle struct {
	ctx  context.Context
	pool *pgxpool.Pool
}

func setupAudit(t *testing.T, mode pgx.QueryExecMode) *auditBundle {
	t.Helper()
	b := &auditBundle{ctx: context.Background()}
	b.pool = pgtest.PoolWithConfig(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = mode })
	b.exec(t, unguardedDiscounts)
	return b
}

func (b *auditBundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	_, err := b.pool.Exec(b.ctx, sql, args...)
	require.NoError(t, err, sql)
}

// insert writes the rows in order and returns their ids.
func (b *auditBundle) insert(t *testing.T, rows ...discount) []int64 {
	t.Helper()
	ids := make([]int64, len(rows))
	for i, r := range rows {
		var status *string
		if r.status != "" {
			status = &r.status
		}
		require.NoError(t, b.pool.QueryRow(b.ctx,
			`INSERT INTO loyalty_discounts (user_id, promo_code, status, created_at)
			 VALUES ($1, 'promo_' || gen_random_uuid(), $2, $3) RETURNING id`,
			r.user, status, t0.Add(time.Duration(r.at)*time.Minute)).Scan(&ids[i]))
	}
	return ids
}

// shape reduces groups to their keys and, per group, one column of each row.
func shape(groups []pgguard.DuplicateGroup, column string) (keys [][]any, rows [][]any) {
	for _, g := range groups {
		keys = append(keys, g.Key)
		var col []any
		for _, r := range g.Rows {
			col = append(col, r[column])
		}
		rows = append(rows, col)
	}
	return keys, rows
}

func TestAuditFindsExactlyTheDuplicateGroups(t *testing.T) {
	t.Parallel()
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			b := setupAudit(t, mode)
			ids := b.insert(t,
				discount{1, "applied", 20}, // 0: user 1, two active rows, the newer one first
				discount{1, "skipped", 10}, // 1
				discount{2, "applied", 50}, // 2: user 2, three active rows
				discount{2, "applied", 30}, // 3
				discount{2, "skipped", 40}, // 4
				discount{3, "applied", 0},  // 5: user 3, one active row and exempt ones
				discount{3, "revoked", 1},  // 6
				discount{3, "failed", 2},   // 7
				discount{4, "applied", 0},  // 8: user 4, one active row and NULL statuses
				discount{4, "", 1},         // 9
				discount{4, "", 2},         // 10
				discount{5, "revoked", 0},  // 11: user 5, nothing active
				discount{5, "revoked", 1},  // 12
				discount{6, "applied", 0},  // 13: user 6, one row
			)

			// Oldest first by the caller's order.
			groups, err := pgguard.Audit(b.ctx, b.pool, loyalty, &pgguard.AuditOptions{
				OrderBy: []string{"created_at", "id"},
				Columns: []string{"id", "status", "created_at"},
			})
			require.NoError(t, err)
			keys, rows := shape(groups, "id")
			require.Equal(t, [][]any{{int64(1)}, {int64(2)}}, keys)
			require.Equal(t, [][]any{{ids[1], ids[0]}, {ids[3], ids[4], ids[2]}}, rows)
			require.Equal(t, pgguard.DuplicateRow{"id": ids[3], "status": "applied", "created_at": t0.Add(30 * time.Minute)},
				normalise(groups[1].Rows[0]))

			// Defaults: ordered by the primary key, showing the key, the
			// status and the primary key.
			groups, err = pgguard.Audit(b.ctx, b.pool, loyalty, nil)
			require.NoError(t, err)
			keys, rows = shape(groups, "id")
			require.Equal(t, [][]any{{int64(1)}, {int64(2)}}, keys)
			require.Equal(t, [][]any{{ids[0], ids[1]}, {ids[2], ids[3], ids[4]}}, rows)
			require.Equal(t, pgguard.DuplicateRow{"user_id": int64(1), "status": "applied", "id": ids[0]}, groups[0].Rows[0])

			// Ties on the caller's order come in physical order.
			b.exec(t, `UPDATE loyalty_discounts SET created_at = $1 WHERE user_id = 2`, t0)
			groups, err = pgguard.Audit(b.ctx, b.pool, loyalty, &pgguard.AuditOptions{OrderBy: []string{"created_at"}, Columns: []string{"ctid", "id"}})
			require.NoError(t, err)
			require.Len(t, groups, 2)
			var tids []pgtype.TID
			for _, r := range groups[1].Rows {
				tids = append(tids, r["ctid"].(pgtype.TID))
			}
			require.True(t, tidLess(tids[0], tids[1]) && tidLess(tids[1], tids[2]), "%v", tids)
		})
	}
}

// normalise turns times into UTC, as the test wrote them.
func normalise(r pgguard.DuplicateRow) pgguard.DuplicateRow {
	out := pgguard.DuplicateRow{}
	for k, v := range r {
		if tm, ok := v.(time.Time); ok {
			v = tm.UTC()
		}
		out[k] = v
	}
	return out
}

func tidLess(a, b pgtype.TID) bool {
	return a.BlockNumber < b.BlockNumber || a.BlockNumber == b.BlockNumber && a.OffsetNumber < b.OffsetNumber
}

func TestAuditFindsNothingOnACleanTable(t *testing.T) {
	t.Parallel()
	b := setupAudit(t, pgx.QueryExecModeCacheStatement)
	groups, err := pgguard.Audit(b.ctx, b.pool, loyalty, nil)
	require.NoError(t, err)
	require.Empty(t, groups, "an empty table")

	b.insert(t, discount{1, "applied", 0}, discount{1, "revoked", 1}, discount{1, "", 2}, discount{2, "skipped", 0})
	groups, err = pgguard.Audit(b.ctx, b.pool, loyalty, nil)
	require.NoError(t, err)
	require.Empty(t, groups)

	// The same rows, audited inside a transaction, see its own writes.
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(b.ctx) }()
	_, err = tx.Exec(b.ctx, `INSERT INTO loyalty_discounts (user_id, promo_code, status, created_at) VALUES (2, 'x', 'applied', now())`)
	require.NoError(t, err)
	groups, err = pgguard.Audit(b.ctx, tx, loyalty, nil)
	require.NoError(t, err)
	keys, _ := shape(groups, "id")
	require.Equal(t, [][]any{{int64(2)}}, keys)
}

func TestAuditSeveralKeyColumnsAndNullKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	_, err := pool.Exec(ctx, `CREATE TABLE notices (
		id       int  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		payee_id text,
		tax_year int,
		status   text NOT NULL)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO notices (payee_id, tax_year, status) VALUES
		('p1', 2024, 'sent'), ('p1', 2024, 'sent'),       -- 1, 2: a group
		('p1', 2025, 'sent'),                             -- 3: another year
		('p2', 2024, 'sent'), ('p2', 2024, 'bounced'),    -- 4, 5: one active
		(NULL, 2024, 'sent'), (NULL, 2024, 'sent'),       -- 6, 7: NULLs are distinct
		('p3', NULL, 'sent'), ('p3', NULL, 'sent'),       -- 8, 9
		('p4', 2023, 'queued'), ('p4', 2023, 'sent'), ('p4', 2023, 'queued')  -- 10, 11, 12`)
	require.NoError(t, err)
	g := pgguard.Guard{Table: "notices", Columns: []string{"payee_id", "tax_year"}, StatusColumn: "status",
		ActiveStatuses: []string{"queued", "sent"}, IndexName: "uq_notices_active"}

	groups, err := pgguard.Audit(ctx, pool, g, nil)
	require.NoError(t, err)
	keys, rows := shape(groups, "id")
	require.Equal(t, [][]any{{"p1", int32(2024)}, {"p4", int32(2023)}}, keys)
	require.Equal(t, [][]any{{int32(1), int32(2)}, {int32(10), int32(11), int32(12)}}, rows)
	require.Equal(t, pgguard.DuplicateRow{"payee_id": "p4", "tax_year": int32(2023), "status": "sent", "id": int32(11)}, groups[1].Rows[1])

	// Without a status column every row is active.
	g.StatusColumn, g.ActiveStatuses = "", nil
	groups, err = pgguard.Audit(ctx, pool, g, &pgguard.AuditOptions{Columns: []string{"id"}})
	require.NoError(t, err)
	keys, rows = shape(groups, "id")
	require.Equal(t, [][]any{{"p1", int32(2024)}, {"p2", int32(2024)}, {"p4", int32(2023)}}, keys)
	require.Equal(t, [][]any{{int32(1), int32(2)}, {int32(4), int32(5)}, {int32(10), int32(11), int32(12)}}, rows)
}

// Without a primary key, rows come in physical order and carry their ctid,
// which a repair can act on.
func TestAuditWithoutAPrimaryKeyUsesCtid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	_, err := pool.Exec(ctx, `CREATE TABLE grants (user_id bigint NOT NULL, note text NOT NULL, status text NOT NULL)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO grants VALUES (7, 'first', 'applied'), (8, 'x', 'applied'), (7, 'second', 'applied'), (7, 'third', 'skipped')`)
	require.NoError(t, err)

	groups, err := pgguard.Audit(ctx, pool, grantsGuard, &pgguard.AuditOptions{Columns: []string{"note", "ctid"}})
	require.NoError(t, err)
	keys, rows := shape(groups, "note")
	require.Equal(t, [][]any{{int64(7)}}, keys)
	require.Equal(t, [][]any{{"first", "second", "third"}}, rows)

	groups, err = pgguard.Audit(ctx, pool, grantsGuard, nil)
	require.NoError(t, err)
	require.Len(t, groups, 1)
	require.ElementsMatch(t, []string{"user_id", "status", "ctid"}, keysOf(groups[0].Rows[0]))

	// Keep the oldest, delete the others by ctid.
	for _, r := range groups[0].Rows[1:] {
		_, err := pool.Exec(ctx, `DELETE FROM grants WHERE ctid = $1`, r["ctid"])
		require.NoError(t, err)
	}
	groups, err = pgguard.Audit(ctx, pool, grantsGuard, nil)
	require.NoError(t, err)
	require.Empty(t, groups)
	var notes []string
	rs, err := pool.Query(ctx, `SELECT note FROM grants WHERE user_id = 7`)
	require.NoError(t, err)
	notes, err = pgx.CollectRows(rs, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"first"}, notes)
}

var grantsGuard = pgguard.Guard{Table: "grants", Columns: []string{"user_id"}, StatusColumn: "status",
	ActiveStatuses: []string{"applied", "skipped"}, IndexName: "uq_grants_active"}

func keysOf(r pgguard.DuplicateRow) []string {
	var out []string
	for k := range r {
		out = append(out, k)
	}
	return out
}

func TestAuditReportsUnknownNames(t *testing.T) {
	t.Parallel()
	b := setupAudit(t, pgx.QueryExecModeCacheStatement)
	with := func(f func(g *pgguard.Guard)) pgguard.Guard {
		g := loyalty
		g.Columns = append([]string(nil), loyalty.Columns...)
		f(&g)
		return g
	}
	for name, tc := range map[string]struct {
		guard   pgguard.Guard
		opts    *pgguard.AuditOptions
		want    error
		field   string
		missing string
	}{
		"Table":        {with(func(g *pgguard.Guard) { g.Table = "loyalty_discount" }), nil, pgguard.ErrUnknownTable, "Guard.Table", ""},
		"Schema":       {with(func(g *pgguard.Guard) { g.Schema = "no_such_schema" }), nil, pgguard.ErrUnknownTable, "Guard.Table", ""},
		"CaseMatters":  {with(func(g *pgguard.Guard) { g.Table = "Loyalty_Discounts" }), nil, pgguard.ErrUnknownTable, "Guard.Table", ""},
		"KeyColumn":    {with(func(g *pgguard.Guard) { g.Columns = []string{"user_id", "userid"} }), nil, pgguard.ErrUnknownColumn, "Guard.Columns[1]", "userid"},
		"StatusColumn": {with(func(g *pgguard.Guard) { g.StatusColumn = "state" }), nil, pgguard.ErrUnknownColumn, "Guard.StatusColumn", "state"},
		"OrderBy":      {loyalty, &pgguard.AuditOptions{OrderBy: []string{"created"}}, pgguard.ErrUnknownColumn, "AuditOptions.OrderBy[0]", "created"},
		"Columns":      {loyalty, &pgguard.AuditOptions{Columns: []string{"id", "code"}}, pgguard.ErrUnknownColumn, "AuditOptions.Columns[1]", "code"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := pgguard.Audit(b.ctx, b.pool, tc.guard, tc.opts)
			require.ErrorIs(t, err, tc.want)
			var ce *pgguard.CatalogError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
			require.Equal(t, tc.missing, ce.Column)
			if tc.opts == nil {
				_, err = pgguard.CreateIndexConcurrently(b.ctx, b.pool, tc.guard)
				require.ErrorIs(t, err, tc.want)
				require.ErrorAs(t, err, &ce)
				require.Equal(t, tc.field, ce.Field)
			}
		})
	}
	b.exec(t, `ALTER TABLE loyalty_discounts ADD COLUMN gone int`)
	b.exec(t, `ALTER TABLE loyalty_discounts DROP COLUMN gone`)
	_, err := pgguard.Audit(b.ctx, b.pool, loyalty, &pgguard.AuditOptions{Columns: []string{"gone"}})
	require.ErrorIs(t, err, pgguard.ErrUnknownColumn, "a dropped column is gone")

	// Names that cannot be identifiers are refused before anything is sent.
	_, err = pgguard.Audit(b.ctx, b.pool, loyalty, &pgguard.AuditOptions{OrderBy: []string{""}})
	var ie *pgguard.IdentifierError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "AuditOptions.OrderBy[0]", ie.Field)
	_, err = pgguard.Audit(b.ctx, b.pool, loyalty, &pgguard.AuditOptions{Columns: []string{strings.Repeat("c", 64)}})
	require.ErrorIs(t, err, pgguard.ErrInvalidIdentifier)
	_, err = pgguard.Audit(b.ctx, b.pool, pgguard.Guard{Table: "loyalty_discounts"}, nil)
	require.ErrorIs(t, err, pgguard.ErrInvalidGuard)
	_, err = pgguard.Audit(b.ctx, (*pgxpool.Pool)(nil), loyalty, nil)
	require.ErrorIs(t, err, pgguard.ErrNilDB)
}

func TestAuditQuotesOddNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, schema := pgtest.Schema(t)
	_, err := pool.Exec(ctx, `CREATE TABLE "Odd ""Grants""" ("user id" bigint NOT NULL, "select" text NOT NULL, "Status" text NOT NULL, "order" int NOT NULL)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO "Odd ""Grants""" VALUES
		(1, 'b', 'it''s', 2), (1, 'a', E'a\\b', 1), (1, 'c', 'it''s ', 0),
		(2, 'x', 'it''s', 0), (2, 'y', 'other', 1)`)
	require.NoError(t, err)
	g := pgguard.Guard{Schema: schema, Table: `Odd "Grants"`, Columns: []string{"user id"}, StatusColumn: "Status",
		ActiveStatuses: []string{"it's", `a\b`}, IndexName: `uq "odd"`}

	groups, err := pgguard.Audit(ctx, pool, g, &pgguard.AuditOptions{OrderBy: []string{"order"}, Columns: []string{"select", "Status"}})
	require.NoError(t, err)
	require.Equal(t, []pgguard.DuplicateGroup{{
		Key: []any{int64(1)},
		Rows: []pgguard.DuplicateRow{
			{"select": "a", "Status": `a\b`},
			{"select": "b", "Status": "it's"},
		},
	}}, groups)

	_, err = pgguard.Audit(ctx, pool, g, &pgguard.AuditOptions{OrderBy: []string{"Order"}})
	require.ErrorIs(t, err, pgguard.ErrUnknownColumn, "identifiers are used exactly as given")
}

// The audit reads the table at most twice (the grouping and the join back
// to the duplicate rows), never in a nested loop over itself. With 50,000
// rows whose keys fit in the default work_mem, PostgreSQL honestly prefers a
// sequential scan into an in-memory hash for the grouping; when the keys do
// not fit (a production-sized table, stood in for here by the smallest
// work_mem, SET LOCAL for the one EXPLAIN), it streams them from the index
// on the key column rather than spilling to disk.
func TestAuditPlanIsLinearAndUsesTheKeyIndex(t *testing.T) {
	t.Parallel()
	var counter pgcount.StatementCounter
	ctx := context.Background()
	pool := pgtest.PoolWithConfig(t, counter.Configure)
	_, err := pool.Exec(ctx, unguardedDiscounts)
	require.NoError(t, err)
	// 50,000 rows in random order, 1 in 10 revoked, 28 users with a second
	// active row.
	_, err = pool.Exec(ctx, `INSERT INTO loyalty_discounts (user_id, promo_code, status, created_at)
		SELECT u, 'promo_' || u, CASE WHEN u % 10 = 0 THEN 'revoked' ELSE 'applied' END, now()
		FROM generate_series(1, 50000) u ORDER BY random()`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO loyalty_discounts (user_id, promo_code, status, created_at)
		SELECT u, 'dup_' || u, 'skipped', now() FROM generate_series(1, 28) u`)
	require.NoError(t, err)
	for _, sql := range []string{`CREATE INDEX loyalty_discounts_user_id ON loyalty_discounts (user_id)`, `VACUUM ANALYZE loyalty_discounts`} {
		_, err = pool.Exec(ctx, sql)
		require.NoError(t, err)
	}

	counter.Reset()
	groups, err := pgguard.Audit(ctx, pool, loyalty, nil)
	require.NoError(t, err)
	require.Len(t, groups, 26, "users 10 and 20 have a revoked first row")
	var audit string
	for _, s := range counter.Statements() {
		if strings.Contains(s, "HAVING count(*) > 1") {
			audit = s
		}
	}
	require.NotEmpty(t, audit, "the audit statement: %v", counter.Statements())

	explain := func(workMem string) planNode {
		t.Helper()
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		if workMem != "" {
			_, err = tx.Exec(ctx, "SET LOCAL work_mem = '"+workMem+"'")
			require.NoError(t, err)
		}
		var out []byte
		require.NoError(t, tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+audit).Scan(&out))
		var plans []struct{ Plan planNode }
		require.NoError(t, json.Unmarshal(out, &plans))
		require.Len(t, plans, 1)
		t.Logf("work_mem %q: %s", workMem, plans[0].Plan)
		return plans[0].Plan
	}
	linear := func(plan planNode) (scans []planNode) {
		t.Helper()
		plan.walk(func(n planNode, underNestedLoop bool) {
			if n.Relation != "loyalty_discounts" {
				return
			}
			scans = append(scans, n)
			require.False(t, underNestedLoop && n.NodeType == "Seq Scan", "a sequential scan of the table inside a nested loop: %s", plan)
		})
		require.Len(t, scans, 2, "one scan to group, one to join back: %s", plan)
		return scans
	}

	linear(explain(""))
	used := false
	for _, s := range linear(explain("64kB")) {
		used = used || (s.NodeType == "Index Scan" || s.NodeType == "Index Only Scan") && s.Index == "loyalty_discounts_user_id"
	}
	require.True(t, used, "no scan uses the index on the key column")
}

// planNode is one node of EXPLAIN (FORMAT JSON).
type planNode struct {
	NodeType string     `json:"Node Type"`
	Relation string     `json:"Relation Name"`
	Index    string     `json:"Index Name"`
	Plans    []planNode `json:"Plans"`
}

func (n planNode) walk(f func(n planNode, underNestedLoop bool)) {
	var rec func(n planNode, under bool)
	rec = func(n planNode, under bool) {
		f(n, under)
		for _, c := range n.Plans {
			rec(c, under || n.NodeType == "Nested Loop")
		}
	}
	rec(n, false)
}

func (n planNode) String() string {
	s := n.NodeType
	if n.Relation != "" {
		s += " on " + n.Relation
	}
	if n.Index != "" {
		s += " using " + n.Index
	}
	if len(n.Plans) > 0 {
		var kids []string
		for _, c := range n.Plans {
			kids = append(kids, c.String())
		}
		s += " (" + strings.Join(kids, ", ") + ")"
	}
	return s
}

// Keys equal under the column's equality but written differently (numeric
// 1.0 and 1.00) are one group, as the index would see them.
func TestAuditGroupsKeysThatCompareEqual(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	_, err := pool.Exec(ctx, `CREATE TABLE credits (id int PRIMARY KEY, amount numeric NOT NULL, status text NOT NULL)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO credits VALUES (1, 1.0, 'applied'), (2, 2, 'applied'), (3, 1.00, 'applied'), (4, 2.000, 'revoked')`)
	require.NoError(t, err)
	g := pgguard.Guard{Table: "credits", Columns: []string{"amount"}, StatusColumn: "status",
		ActiveStatuses: []string{"applied"}, IndexName: "uq_credits_active"}

	groups, err := pgguard.Audit(ctx, pool, g, &pgguard.AuditOptions{Columns: []string{"id"}})
	require.NoError(t, err)
	require.Len(t, groups, 1)
	_, rows := shape(groups, "id")
	require.Equal(t, [][]any{{int32(1), int32(3)}}, rows)
}
