package pgguard_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// stmtLog is a pgx.QueryTracer that keeps every statement's SQL, arguments
// and rows affected, and can act when a DELETE ends.
type stmtLog struct {
	mu       sync.Mutex
	stmts    []loggedStmt
	deletes  int
	onDelete func(n int) // called, outside the lock, when the nth DELETE has ended
}

type loggedStmt struct {
	sql  string
	args []any
	rows int64
	err  error
}

type stmtKey struct{}

func (l *stmtLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, stmtKey{}, loggedStmt{sql: d.SQL, args: d.Args})
}

func (l *stmtLog) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	s, _ := ctx.Value(stmtKey{}).(loggedStmt)
	s.rows, s.err = d.CommandTag.RowsAffected(), d.Err
	l.mu.Lock()
	l.stmts = append(l.stmts, s)
	isDelete := strings.HasPrefix(s.sql, "DELETE")
	if isDelete {
		l.deletes++
	}
	n, hook := l.deletes, l.onDelete
	l.mu.Unlock()
	if isDelete && hook != nil {
		hook(n)
	}
}

func (l *stmtLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stmts, l.deletes = nil, 0
}

// statements returns the statements since the last reset.
func (l *stmtLog) statements() []loggedStmt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]loggedStmt(nil), l.stmts...)
}

type pruneBundle struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	store *pgguard.Store
	clock *clocktest.Clock
	log   *stmtLog
}

// pruneSetup migrates a ledger in the test's own schema and returns a store
// on a fake clock (Config.Now nil when dbClock) over a traced pool.
func pruneSetup(t *testing.T, mode pgx.QueryExecMode, dbClock bool) *pruneBundle {
	t.Helper()
	log := &stmtLog{}
	pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) {
		c.ConnConfig.Tracer = log
		c.ConnConfig.DefaultQueryExecMode = mode
	})
	ctx := context.Background()
	clock := clocktest.New()
	cfg := &pgguard.Config{Now: clock.Now}
	if dbClock {
		cfg.Now = nil
	}
	require.NoError(t, pgguard.Migrate(ctx, pool, cfg))
	store, err := pgguard.New(pool, cfg)
	require.NoError(t, err)
	log.reset()
	return &pruneBundle{ctx: ctx, pool: pool, store: store, clock: clock, log: log}
}

// finish makes a record of key in namespace ns and leaves it in state st,
// through the store's own API, at the clock's time.
func (b *pruneBundle) finish(t *testing.T, ns, key string, st idempotency.State) {
	t.Helper()
	c, err := b.store.Claim(b.ctx, idempotency.ClaimRequest{Key: key, Namespace: ns, Lease: time.Minute})
	require.NoError(t, err)
	require.Equal(t, idempotency.VerdictAcquired, c.Verdict)
	tok := c.Record.Token
	var change idempotency.Change
	switch st {
	case idempotency.StateApplied, idempotency.StateRevoked:
		change = idempotency.Complete(key, tok, []byte(`{"id":"x"}`))
	case idempotency.StateSkipped:
		change = idempotency.CompleteSkipped(key, tok, []byte(`null`))
	case idempotency.StateFailed:
		change = idempotency.Fail(key, tok, "refused")
	case idempotency.StateReleased:
		change = idempotency.Release(key, tok, "429", 0)
	case idempotency.StateInDoubt:
		change = idempotency.Park(key, tok, "500 replayed", true)
	case idempotency.StateCalling:
		return
	default:
		t.Fatalf("finish: unsupported state %s", st)
	}
	_, err = b.store.Transition(b.ctx, change)
	require.NoError(t, err)
	if st == idempotency.StateRevoked {
		_, err = b.store.Revoke(b.ctx, key, "undone")
		require.NoError(t, err)
	}
}

// keys returns the keys left in the ledger, sorted.
func (b *pruneBundle) keys(t *testing.T) []string {
	t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT key FROM effect_ledger ORDER BY key`)
	require.NoError(t, err)
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return keys
}

var finishedStates = []idempotency.State{idempotency.StateApplied, idempotency.StateSkipped, idempotency.StateFailed, idempotency.StateRevoked}

func TestPruneDeletesOnlyOldFinishedRecordsOfTheNamespace(t *testing.T) {
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			b := pruneSetup(t, mode, false)
			// Old: every state, in the namespace and in another one.
			for _, st := range append(finishedStates, idempotency.StateReleased, idempotency.StateInDoubt, idempotency.StateCalling) {
				b.finish(t, "promo", "old-"+string(st), st)
				b.finish(t, "other", "other-old-"+string(st), st)
			}
			b.clock.Advance(48 * time.Hour)
			for _, st := range finishedStates {
				b.finish(t, "promo", "young-"+string(st), st)
			}
			b.clock.Advance(time.Hour)

			dry, err := b.store.Prune(b.ctx, pgguard.PruneRequest{Namespace: "promo", OlderThan: 24 * time.Hour, DryRun: true})
			require.NoError(t, err)
			require.Equal(t, pgguard.PruneResult{Before: b.clock.Now().Add(-24 * time.Hour), Matched: 4}, dry)
			require.Len(t, b.keys(t), 18, "a dry run deletes nothing")

			b.log.reset()
			res, err := b.store.Prune(b.ctx, pgguard.PruneRequest{Namespace: "promo", OlderThan: 24 * time.Hour, BatchSize: 3})
			require.NoError(t, err)
			require.Equal(t, pgguard.PruneResult{Before: b.clock.Now().Add(-24 * time.Hour), Deleted: 4, Batches: 2}, res)
			stmts := b.log.statements()
			require.Len(t, stmts, 2, "one statement per batch; the fake clock needs no statement")
			require.Equal(t, []int64{3, 1}, []int64{stmts[0].rows, stmts[1].rows})

			require.Equal(t, []string{
				"old-calling", "old-in_doubt", "old-released",
				"other-old-applied", "other-old-calling", "other-old-failed", "other-old-in_doubt",
				"other-old-released", "other-old-revoked", "other-old-skipped",
				"young-applied", "young-failed", "young-revoked", "young-skipped",
			}, b.keys(t))

			again, err := b.store.Prune(b.ctx, pgguard.PruneRequest{Namespace: "promo", OlderThan: 24 * time.Hour})
			require.NoError(t, err)
			require.Equal(t, int64(0), again.Deleted)
			require.Equal(t, 1, again.Batches)
		})
	}
}

func TestPruneOlderThanReadsTheDatabaseClock(t *testing.T) {
	t.Parallel()
	b := pruneSetup(t, pgx.QueryExecModeCacheStatement, true)
	b.finish(t, "promo", "recent", idempotency.StateApplied)
	b.finish(t, "promo", "aged", idempotency.StateApplied)
	_, err := b.pool.Exec(b.ctx, `UPDATE effect_ledger SET updated_at = clock_timestamp() - interval '2 hours' WHERE key = 'aged'`)
	require.NoError(t, err)

	b.log.reset()
	before := time.Now()
	res, err := b.store.Prune(b.ctx, pgguard.PruneRequest{Namespace: "promo", OlderThan: time.Hour})
	require.NoError(t, err)
	require.Equal(t, int64(1), res.Deleted)
	// The cut-off is the database's now minus an hour: the local clock and
	// the server's are the same machine's here.
	require.WithinDuration(t, before.Add(-time.Hour), res.Before, time.Minute)
	stmts := b.log.statements()
	require.Len(t, stmts, 2, "the clock, then one batch")
	require.Contains(t, stmts[0].sql, "clock_timestamp()")
	require.Equal(t, []string{"recent"}, b.keys(t))
}

func TestPruneEffectFollowsRetain(t *testing.T) {
	t.Parallel()
	b := pruneSetup(t, pgx.QueryExecModeCacheStatement, false)
	b.finish(t, "loyalty.anniversary", "a1", idempotency.StateApplied)
	b.clock.Advance(400 * 24 * time.Hour)
	eff := &idempotency.Effect[string, string]{
		Name: "anniversary",
		Key:  func(string) (idempotency.Key, error) { return idempotency.Key{}, nil },
		Call: func(context.Context, idempotency.Key, string) (string, error) { return "", nil },
	}

	b.log.reset()
	res, err := pgguard.PruneEffect(b.ctx, b.store, eff, "loyalty.anniversary")
	require.NoError(t, err)
	require.Equal(t, pgguard.PruneResult{}, res)
	require.Empty(t, b.log.statements(), "a zero Retain keeps records for ever: nothing is sent")
	require.Equal(t, []string{"a1"}, b.keys(t))

	eff.Retain = -time.Hour
	_, err = pgguard.PruneEffect(b.ctx, b.store, eff, "loyalty.anniversary")
	require.ErrorIs(t, err, idempotency.ErrInvalidEffect)

	eff.Retain = 365 * 24 * time.Hour
	res, err = pgguard.PruneEffect(b.ctx, b.store, eff, "loyalty.anniversary")
	require.NoError(t, err)
	require.Equal(t, int64(1), res.Deleted)
	require.Equal(t, b.clock.Now().Add(-eff.Retain), res.Before)
	require.Empty(t, b.keys(t))
}

func TestPruneRefusesAnInvalidRequest(t *testing.T) {
	t.Parallel()
	b := pruneSetup(t, pgx.QueryExecModeCacheStatement, false)
	cut := b.clock.Now()
	for name, req := range map[string]pgguard.PruneRequest{
		"no namespace":       {Before: cut},
		"no cut-off":         {Namespace: "promo"},
		"two cut-offs":       {Namespace: "promo", Before: cut, OlderThan: time.Hour},
		"negative OlderThan": {Namespace: "promo", OlderThan: -time.Hour},
		"negative batch":     {Namespace: "promo", Before: cut, BatchSize: -1},
		"batch too large":    {Namespace: "promo", Before: cut, BatchSize: pgguard.MaxPruneBatch + 1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := b.store.Prune(b.ctx, req)
			require.ErrorIs(t, err, pgguard.ErrInvalidPrune)
		})
	}
	require.Empty(t, b.log.statements(), "an invalid request sends nothing")
}

// seedLedger inserts n records set-based: namespaces ns.0 .. ns.9 (i % 10),
// the ten states in turn within each namespace, and ages of 0 to 199 hours
// before base, independent of the state. It then analyzes the table.
func seedLedger(t *testing.T, b *pruneBundle, n int, base time.Time) {
	t.Helper()
	_, err := b.pool.Exec(b.ctx, `INSERT INTO effect_ledger
	(key, namespace, state, result, token, claims, generation, first_claimed_at, updated_at)
SELECT 'k' || i, 'ns.' || (i % 10), (ARRAY['claimed', 'calling', 'reconciling', 'released', 'unknown', 'in_doubt',
		'applied', 'skipped', 'failed', 'revoked'])[1 + (i / 10) % 10],
	'\x7b7d'::bytea, nextval('effect_ledger_token_seq'), 1, 1,
	$1::timestamptz - ((i / 100) % 200) * interval '1 hour' - interval '1 minute',
	$1::timestamptz - ((i / 100) % 200) * interval '1 hour'
FROM generate_series(1, $2::integer) AS i`, base, n)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `ANALYZE effect_ledger`)
	require.NoError(t, err)
}

type group struct {
	namespace, state string
	old              bool
}

func groups(t *testing.T, b *pruneBundle, cut time.Time) map[group]int {
	t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT namespace, state, updated_at < $1, count(*) FROM effect_ledger GROUP BY 1, 2, 3`, cut)
	require.NoError(t, err)
	out := map[group]int{}
	for rows.Next() {
		var g group
		var n int
		require.NoError(t, rows.Scan(&g.namespace, &g.state, &g.old, &n))
		out[g] = n
	}
	require.NoError(t, rows.Err())
	return out
}

func TestPruneOnALargeLedger(t *testing.T) {
	t.Parallel()
	const rows, batch = 200_000, 300
	b := pruneSetup(t, pgx.QueryExecModeCacheStatement, false)
	base := b.clock.Now()
	seedLedger(t, b, rows, base)
	cut := base.Add(-100*time.Hour + 30*time.Minute) // ages 100 h and more are older

	before := groups(t, b, cut)
	want := 0
	for g, n := range before {
		st := idempotency.State(g.state)
		require.True(t, st.Valid(), g.state)
		if g.namespace == "ns.0" && g.old && !st.Pending() {
			want += n
		}
	}
	require.Equal(t, 4000, want, "the seed: ns.0 holds 20,000 records, 4 finished states in 10, half of them old")

	t.Run("DryRunCountsAndDeletesNothing", func(t *testing.T) {
		res, err := b.store.Prune(b.ctx, pgguard.PruneRequest{Namespace: "ns.0", Before: cut, DryRun: true})
		require.NoError(t, err)
		require.Equal(t, pgguard.PruneResult{Before: cut, Matched: int64(want)}, res)
		require.Equal(t, before, groups(t, b, cut))
	})

	var deleteSQL string
	t.Run("DeletesExactlyTheOldFinishedRecordsInBatches", func(t *testing.T) {
		b.log.reset()
		res, err := b.store.Prune(b.ctx, pgguard.PruneRequest{Namespace: "ns.0", Before: cut, BatchSize: batch})
		require.NoError(t, err)
		full := want / batch
		require.Equal(t, pgguard.PruneResult{Before: cut, Deleted: int64(want), Batches: full + 1}, res)
		stmts := b.log.statements()
		require.Len(t, stmts, full+1, "one statement per batch")
		for i, s := range stmts {
			wantRows := int64(batch)
			if i == full {
				wantRows = int64(want % batch)
			}
			require.Equal(t, wantRows, s.rows, "batch %d", i)
		}
		deleteSQL = stmts[0].sql

		after := groups(t, b, cut)
		for g, n := range before {
			if g.namespace == "ns.0" && g.old && !idempotency.State(g.state).Pending() {
				require.Zero(t, after[g], "%+v: left behind", g)
				continue
			}
			require.Equal(t, n, after[g], "%+v: pending, young or another namespace's records were deleted", g)
		}
	})

	t.Run("EachBatchWalksTheFinishedIndex", func(t *testing.T) {
		require.NotEmpty(t, deleteSQL)
		// ns.1 still holds its old finished records: the plan a batch gets
		// on a full namespace, as the planner chooses it (a custom plan).
		plan := explain(t, b, "EXPLAIN (FORMAT JSON) "+deleteSQL, "ns.1", cut)
		requireIndexPlan(t, plan)

		// And the generic plan, which a prepared statement switches to
		// after five executions.
		conn, err := b.pool.Acquire(b.ctx)
		require.NoError(t, err)
		defer conn.Release()
		_, err = conn.Exec(b.ctx, "PREPARE prune_batch AS "+deleteSQL)
		require.NoError(t, err)
		defer func() { _, _ = conn.Exec(context.WithoutCancel(b.ctx), "DEALLOCATE prune_batch") }()
		_, err = conn.Exec(b.ctx, "SET plan_cache_mode = force_generic_plan")
		require.NoError(t, err)
		defer func() { _, _ = conn.Exec(context.WithoutCancel(b.ctx), "RESET plan_cache_mode") }()
		var raw []byte
		// EXECUTE takes no bind parameters: the cut-off is a literal.
		require.NoError(t, conn.QueryRow(b.ctx, "EXPLAIN (FORMAT JSON) EXECUTE prune_batch('ns.1', '"+
			cut.Format(time.RFC3339Nano)+"')").Scan(&raw))
		requireIndexPlan(t, parsePlan(t, raw))

		// Executed (and rolled back): the rows and time one batch costs.
		tx, err := b.pool.Begin(b.ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(context.WithoutCancel(b.ctx)) }()
		require.NoError(t, tx.QueryRow(b.ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+deleteSQL, "ns.1", cut).Scan(&raw))
		analyzed := parsePlan(t, raw)
		scan := requireIndexPlan(t, analyzed)
		require.Equal(t, float64(batch), scan["Actual Rows"], "the index scan stops at the batch")
		t.Logf("one batch of %d on a ledger of %d rows: %s on %s, %v actual rows, execution %v ms",
			batch, rows, scan["Node Type"], scan["Index Name"], scan["Actual Rows"], analyzed.executionTime)
	})

	t.Run("ACancelledContextStopsBetweenBatches", func(t *testing.T) {
		ctx, cancel := context.WithCancel(b.ctx)
		defer cancel()
		b.log.mu.Lock()
		b.log.onDelete = func(n int) {
			if n == 2 {
				cancel()
			}
		}
		b.log.mu.Unlock()
		defer func() {
			b.log.mu.Lock()
			b.log.onDelete = nil
			b.log.mu.Unlock()
		}()
		b.log.reset()
		res, err := b.store.Prune(ctx, pgguard.PruneRequest{Namespace: "ns.2", Before: cut, BatchSize: batch})
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, 2, res.Batches)
		require.Equal(t, int64(2*batch), res.Deleted)
		require.Len(t, b.log.statements(), 2, "no batch starts after the cancellation")
		left := 0
		for g, n := range groups(t, b, cut) {
			if g.namespace == "ns.2" && g.old && !idempotency.State(g.state).Pending() {
				left += n
			}
		}
		require.Equal(t, want-2*batch, left, "the two batches stay deleted; nothing more")
	})
}

// pruneNode is one node of an EXPLAIN (FORMAT JSON) plan.
type pruneNode map[string]any

type prunePlan struct {
	root          pruneNode
	executionTime any
}

func explain(t *testing.T, b *pruneBundle, sql string, args ...any) prunePlan {
	t.Helper()
	var raw []byte
	require.NoError(t, b.pool.QueryRow(b.ctx, sql, args...).Scan(&raw))
	return parsePlan(t, raw)
}

func parsePlan(t *testing.T, raw []byte) prunePlan {
	t.Helper()
	var out []struct {
		Plan          pruneNode `json:"Plan"`
		ExecutionTime any       `json:"Execution Time"`
	}
	require.NoError(t, json.Unmarshal(raw, &out), "%s", raw)
	require.Len(t, out, 1)
	return prunePlan{root: out[0].Plan, executionTime: out[0].ExecutionTime}
}

// nodes lists n and every node below it, depth first.
func (n pruneNode) nodes() []pruneNode {
	out := []pruneNode{n}
	children, _ := n["Plans"].([]any)
	for _, c := range children {
		if m, ok := c.(map[string]any); ok {
			out = append(out, pruneNode(m).nodes()...)
		}
	}
	return out
}

// requireIndexPlan asserts that the plan finds its batch on the finished
// index, deletes by TID, and scans no table, and returns the index node.
func requireIndexPlan(t *testing.T, p prunePlan) pruneNode {
	t.Helper()
	var index pruneNode
	var types []string
	for _, n := range p.root.nodes() {
		typ, _ := n["Node Type"].(string)
		types = append(types, typ)
		require.NotEqual(t, "Seq Scan", typ, "a batch scans the table: %v", p.root)
		switch typ {
		case "Index Scan", "Index Only Scan", "Bitmap Index Scan":
			if n["Index Name"] == "effect_ledger_finished" {
				index = n
			}
		}
	}
	require.NotNil(t, index, "no scan of effect_ledger_finished in the plan (nodes %v): %v", types, p.root)
	require.Contains(t, types, "Tid Scan", "the batch is deleted by TID")
	require.Equal(t, "Delete", p.root["Operation"])
	return index
}
