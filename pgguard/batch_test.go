package pgguard_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/internal/pgcount"
	"github.com/effectonce/effectonce/pgguard"
)

// TestBatchStatementCounts: a batch of any size is one statement; hooks add
// only their transaction's statements, one commit for the whole batch.
func TestBatchStatementCounts(t *testing.T) {
	t.Parallel()
	var counter pgcount.StatementCounter
	b := setup(t, &setupOpts{configure: counter.Configure})
	_, err := b.pool.Exec(b.ctx, `CREATE TABLE grants (key text PRIMARY KEY)`)
	require.NoError(t, err)
	measure := func(fn func()) (int, []string) {
		n, stmts := counter.Measure(fn)
		for i, s := range stmts {
			stmts[i], _, _ = strings.Cut(strings.TrimSpace(s), "\n")
		}
		return n, stmts
	}

	reqs := make([]idempotency.ClaimRequest, 500)
	for i := range reqs {
		reqs[i] = claimReq(fmt.Sprintf("k%d", i))
	}
	reqs[499] = reqs[0] // a repeat inside the batch is decided on the record the first left
	var claims []idempotency.Claim
	n, sqls := measure(func() { claims, err = b.store.ClaimMany(b.ctx, reqs) })
	require.NoError(t, err)
	require.Equal(t, 1, n, "500 claims, one statement: %q", sqls)
	require.Equal(t, idempotency.VerdictInFlight, claims[499].Verdict)
	require.Equal(t, claims[0].Record.Token, claims[499].Record.Token)

	changes := make([]idempotency.Change, 0, 499)
	for _, c := range claims[:499] {
		changes = append(changes, idempotency.Complete(c.Record.Key, c.Record.Token, []byte(`"x"`)))
	}
	var res []idempotency.TransitionResult
	n, sqls = measure(func() { res, err = b.store.TransitionMany(b.ctx, changes) })
	require.NoError(t, err)
	require.Equal(t, 1, n, "499 completions, one statement: %q", sqls)
	for _, r := range res {
		require.NoError(t, r.Err)
		require.Equal(t, idempotency.StateApplied, r.Record.State)
	}

	// Two hooked completions and one plain: BEGIN, the plain UPDATE, for
	// each hook SAVEPOINT, its UPDATE, its INSERT, RELEASE; COMMIT.
	fresh, err := b.store.ClaimMany(b.ctx, []idempotency.ClaimRequest{claimReq("h1"), claimReq("h2"), claimReq("h3")})
	require.NoError(t, err)
	hook := func(key string) func(context.Context) error {
		return func(ctx context.Context) error {
			tx, ok := pgguard.TxFrom(ctx)
			if !ok {
				return errors.New("no transaction")
			}
			_, err := tx.Exec(ctx, `INSERT INTO grants (key) VALUES ($1)`, key)
			return err
		}
	}
	hooked := []idempotency.Change{
		idempotency.Complete("h1", fresh[0].Record.Token, []byte(`1`)),
		idempotency.Complete("h2", fresh[1].Record.Token, []byte(`2`)),
		idempotency.Complete("h3", fresh[2].Record.Token, []byte(`3`)),
	}
	hooked[0].Hook, hooked[1].Hook = hook("h1"), hook("h2")
	n, sqls = measure(func() { res, err = b.store.TransitionMany(b.ctx, hooked) })
	require.NoError(t, err)
	for _, r := range res {
		require.NoError(t, r.Err)
	}
	require.Equal(t, 2+1+2*4, n, "%q", sqls)
	var grants int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM grants`).Scan(&grants))
	require.Equal(t, 2, grants)

	n, _ = measure(func() {
		_, err = b.store.ClaimMany(b.ctx, nil)
		require.NoError(t, err)
		_, err = b.store.TransitionMany(b.ctx, nil)
		require.NoError(t, err)
	})
	require.Zero(t, n, "empty batches send nothing")
}

// TestBatchInCallerTransaction: on a caller's pgx.Tx, a batch joins it and
// a failing hook rolls back to its savepoint, leaving the transaction
// usable.
func TestBatchInCallerTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(b.ctx) }()
	s, err := b.store.WithDB(tx)
	require.NoError(t, err)
	claims, err := s.ClaimMany(b.ctx, []idempotency.ClaimRequest{claimReq("a"), claimReq("b")})
	require.NoError(t, err)
	boom := errors.New("domain row refused")
	ca := idempotency.Complete("a", claims[0].Record.Token, []byte(`"a"`))
	ca.Hook = func(context.Context) error { return boom }
	res, err := s.TransitionMany(b.ctx, []idempotency.Change{ca, idempotency.Complete("b", claims[1].Record.Token, []byte(`"b"`))})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, boom)
	require.NoError(t, res[1].Err)
	got, err := s.Lookup(b.ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateCalling, got["a"].State)
	require.Equal(t, idempotency.StateApplied, got["b"].State)

	outside, err := b.store.Lookup(b.ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.Empty(t, outside, "nothing is visible before the caller commits")
	require.NoError(t, tx.Commit(b.ctx))
	outside, err = b.store.Lookup(b.ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.Len(t, outside, 2)
}

// TestClaimManySnapshotRace: batches that include a key another
// transaction is inserting wait for it; when it commits, each batch saw
// the conflict but not the row. The store re-runs the statement for that
// key only and answers in flight, never "no row", never a second holder.
func TestClaimManySnapshotRace(t *testing.T) {
	t.Parallel()
	const n = 8
	b := setup(t, &setupOpts{configure: func(c *pgxpool.Config) { c.MaxConns = n + 4 }})
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(b.ctx) }()
	inTx, err := b.store.WithDB(tx)
	require.NoError(t, err)
	held, err := inTx.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)

	got := make([][]idempotency.Claim, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = b.store.ClaimMany(b.ctx, []idempotency.ClaimRequest{claimReq(fmt.Sprintf("mine-%d", i)), claimReq("k")})
		}()
	}
	waitForLockWaiters(t, b, n)
	require.NoError(t, tx.Commit(b.ctx))
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		require.Equal(t, idempotency.VerdictAcquired, got[i][0].Verdict, "the batch's other key is claimed once")
		require.Equal(t, idempotency.VerdictInFlight, got[i][1].Verdict)
		require.Equal(t, held.Record.Token, got[i][1].Record.Token)
	}
	require.Positive(t, pgguard.ClaimRetries(b.store), "the race did not happen: no batch had to re-run")
	var mine int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM effect_ledger WHERE key LIKE 'mine-%' AND claims = 1`).Scan(&mine))
	require.Equal(t, n, mine, "re-running the statement for one key never claims the others twice")
}

// TestBatchTakeoverRacesACompletion: a batch that would take over an
// expired claim while its late holder completes it meets the completed
// record (the UPDATE decides again on the row it waited for).
func TestBatchTakeoverRacesACompletion(t *testing.T) {
	t.Parallel()
	b := setup(t, &setupOpts{configure: func(c *pgxpool.Config) { c.MaxConns = 8 }})
	r := claimReq("k")
	r.TakeOver = true
	first, err := b.store.Claim(b.ctx, r)
	require.NoError(t, err)
	b.clock.Advance(2 * time.Minute)

	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(b.ctx) }()
	inTx, err := b.store.WithDB(tx)
	require.NoError(t, err)
	_, err = inTx.Transition(b.ctx, idempotency.Complete("k", first.Record.Token, []byte(`"late"`)))
	require.NoError(t, err)

	done := make(chan []idempotency.Claim)
	go func() {
		c, err := b.store.ClaimMany(b.ctx, []idempotency.ClaimRequest{r, claimReq("other")})
		if err != nil {
			t.Error(err)
		}
		done <- c
	}()
	waitForLockWaiters(t, b, 1)
	require.NoError(t, tx.Commit(b.ctx))
	got := <-done
	require.Equal(t, idempotency.VerdictDone, got[0].Verdict)
	require.Equal(t, `"late"`, string(got[0].Record.Result))
	require.Equal(t, idempotency.VerdictAcquired, got[1].Verdict)
}

// TestBatchUpdateUsesTheActiveKeyIndex: the fenced batch UPDATE finds each
// row by the active-key index, never by scanning the pending records (the
// stuck index holds them all), even when they are many.
func TestBatchUpdateUsesTheActiveKeyIndex(t *testing.T) {
	t.Parallel()
	var counter pgcount.StatementCounter
	b := setup(t, &setupOpts{configure: counter.Configure})
	_, err := b.pool.Exec(b.ctx, `INSERT INTO effect_ledger (key, namespace, state, token, lease_until, first_claimed_at, updated_at)
		SELECT 'p' || g, 'test', 'calling', nextval('effect_ledger_token_seq'), now() + interval '1 hour', now(), now()
		FROM generate_series(1, 20000) AS g`)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `ANALYZE effect_ledger`)
	require.NoError(t, err)
	claims, err := b.store.ClaimMany(b.ctx, []idempotency.ClaimRequest{claimReq("a"), claimReq("b")})
	require.NoError(t, err)
	changes := []idempotency.Change{
		idempotency.Complete("a", claims[0].Record.Token, []byte(`1`)),
		idempotency.Release("b", claims[1].Record.Token, "429", 0),
	}
	n, stmts := counter.Measure(func() {
		_, err = b.store.TransitionMany(b.ctx, changes)
		require.NoError(t, err)
	})
	require.Equal(t, 1, n)
	sql := stmts[0]
	// The same changes, as TransitionMany sends them (see its statement).
	args := []any{[]string{"a", "b"}, []int64{claims[0].Record.Token, claims[1].Record.Token}, []string{"applied", "released"},
		[]string{"claimed,calling,reconciling", "claimed,calling"}, [][]byte{[]byte("1"), nil}, []string{"", "429"}, []string{"[]", "[]"},
		[]int64{0, 0}, []int64{0, 0}, []bool{false, false}, []bool{false, false}, []int64{0, 0}, nil, int64(2)}
	for _, mode := range []string{"auto", "force_generic_plan"} {
		conn, err := b.pool.Acquire(b.ctx)
		require.NoError(t, err)
		_, err = conn.Exec(b.ctx, "SET plan_cache_mode = "+mode)
		require.NoError(t, err)
		rows, err := conn.Query(b.ctx, "EXPLAIN "+sql, args...)
		require.NoError(t, err)
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		_, err = conn.Exec(b.ctx, "RESET plan_cache_mode")
		require.NoError(t, err)
		conn.Release()
		text := strings.Join(plan, "\n")
		require.Contains(t, text, "effect_ledger_active_key", "%s plan:\n%s", mode, text)
		require.NotContains(t, text, "effect_ledger_stuck", "%s plan:\n%s", mode, text)
	}
}

// TestBatchStatementsStayOnTheirGenericPlans: ClaimMany's and
// TransitionMany's statements, run again and again with small batches (a
// group commit's 8), are planned once and then run on their cached generic
// plans; none is planned again on every execution. PostgreSQL plans a
// prepared statement's first 5 executions with their parameters (custom
// plans) and then keeps the generic plan unless a custom one looks cheaper.
// TransitionMany's arrays made every custom plan of fewer than 10 changes
// look cheaper, so it was planned again each time (see its statement).
func TestBatchStatementsStayOnTheirGenericPlans(t *testing.T) {
	t.Parallel()
	b := setup(t, &setupOpts{configure: func(c *pgxpool.Config) {
		c.MaxConns = 1 // one connection: one cache of prepared statements
		c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	}})
	// A ledger with some history and its statistics, as in production: on
	// an empty table every plan costs about the same.
	_, err := b.pool.Exec(b.ctx, `INSERT INTO effect_ledger (key, namespace, state, result, token, first_claimed_at, updated_at)
		SELECT 'h' || g, 'test', 'applied', '\x'::bytea, nextval('effect_ledger_token_seq'), now(), now()
		FROM generate_series(1, 20000) AS g`)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `ANALYZE effect_ledger`)
	require.NoError(t, err)
	const cycles, size = 12, 8
	for c := range cycles {
		reqs := make([]idempotency.ClaimRequest, size)
		for i := range reqs {
			reqs[i] = claimReq(fmt.Sprintf("plan-%d-%d", c, i))
		}
		claims, err := b.store.ClaimMany(b.ctx, reqs)
		require.NoError(t, err)
		changes := make([]idempotency.Change, size)
		for i, cl := range claims {
			require.Equal(t, idempotency.VerdictAcquired, cl.Verdict)
			changes[i] = idempotency.Complete(cl.Record.Key, cl.Record.Token, []byte(`1`))
		}
		res, err := b.store.TransitionMany(b.ctx, changes)
		require.NoError(t, err)
		for _, r := range res {
			require.NoError(t, r.Err)
		}
	}
	rows, err := b.pool.Query(b.ctx, `SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
		WHERE statement LIKE '%unnest(%' AND statement NOT LIKE '%pg_prepared_statements%'`)
	require.NoError(t, err)
	type plans struct {
		Statement       string
		Generic, Custom int64
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[plans])
	require.NoError(t, err)
	require.Len(t, got, 2, "ClaimMany's and TransitionMany's statements")
	for _, p := range got {
		require.Equal(t, int64(cycles), p.Generic+p.Custom, "%.60s", p.Statement)
		require.LessOrEqual(t, p.Custom, int64(5), "planned again on every execution: %.200s", p.Statement)
	}
}

// TestProviderTextWithNULOrBadUTF8IsStoredNotFatal: a reason or an error
// message from a provider's answer may hold a NUL byte or invalid UTF-8,
// which PostgreSQL refuses in text (and jsonb refuses as \u0000). Such a
// change is stored with U+FFFD in their place; it does not fail its
// statement, and in a batch it does not fail the provider success written
// beside it.
func TestProviderTextWithNULOrBadUTF8IsStoredNotFatal(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const nul, bad = "boom\x00nul", "bad \xff byte"
	attempt := idempotency.Attempt{At: b.clock.Now(), Generation: 1, Class: idempotency.AttemptNotActed, Status: 429,
		RequestID: "req\x00", Error: "too many\x00 requests \xfe"}

	claims, err := b.store.ClaimMany(b.ctx, []idempotency.ClaimRequest{claimReq("done"), claimReq("nul"), claimReq("bad")})
	require.NoError(t, err)
	release := idempotency.Release("nul", claims[1].Record.Token, nul, 0)
	release.Evidence = []idempotency.Attempt{attempt}
	res, err := b.store.TransitionMany(b.ctx, []idempotency.Change{
		idempotency.Complete("done", claims[0].Record.Token, []byte(`"promo_1"`)),
		release,
		idempotency.Release("bad", claims[2].Record.Token, bad, 0),
	})
	require.NoError(t, err)
	for i, r := range res {
		require.NoError(t, r.Err, "change %d", i)
	}
	recs, err := b.store.Lookup(b.ctx, []string{"done", "nul", "bad"})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateApplied, recs["done"].State, "the provider's success is recorded")
	require.Equal(t, "boom\uFFFDnul", recs["nul"].Reason)
	require.Equal(t, "bad \uFFFD byte", recs["bad"].Reason)
	require.Len(t, recs["nul"].Evidence, 1)
	require.Equal(t, "too many\uFFFD requests \uFFFD", recs["nul"].Evidence[0].Error)
	require.Equal(t, "req\uFFFD", recs["nul"].Evidence[0].RequestID)

	// One change on its own, and an operator's settle and revoke.
	c, err := b.store.Claim(b.ctx, claimReq("single"))
	require.NoError(t, err)
	rec, err := b.store.Transition(b.ctx, idempotency.Release("single", c.Record.Token, nul, 0))
	require.NoError(t, err)
	require.Equal(t, "boom\uFFFDnul", rec.Reason)
	var op idempotency.Operator = b.store
	_, err = op.Revoke(b.ctx, "done", bad)
	require.NoError(t, err)
}

// failSecondClaim is the test's pool with one fault: the first batch claim
// statement runs, but its row for the key hide is not read (as if another
// worker had taken that key after the statement's snapshot, which makes
// ClaimMany run the statement again), and that second statement fails.
type failSecondClaim struct {
	*pgxpool.Pool
	hide   string
	claims int
}

var errSecondClaim = errors.New("connection reset by peer (injected)")

func (f *failSecondClaim) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if !strings.Contains(sql, "AS q(key, namespace, fp, lease, takeover, win, track, reconcile)") {
		return f.Pool.Query(ctx, sql, args...)
	}
	f.claims++
	if f.claims > 1 {
		return nil, errSecondClaim
	}
	rows, err := f.Pool.Query(ctx, sql, args...)
	return &hideRow{Rows: rows, key: f.hide}, err
}

type hideRow struct {
	pgx.Rows
	key string
}

func (h *hideRow) Next() bool {
	for h.Rows.Next() {
		if string(h.Rows.RawValues()[0]) != h.key {
			return true
		}
	}
	return false
}

// TestClaimManyThatFailsHalfWayGivesBackItsClaims: when a later statement
// of ClaimMany fails, the caller gets no Claim and will never call; the
// claims the earlier statement took on keys nothing may have acted on are
// released at once with the failure as their reason (not held and, past
// the lease, in doubt as if a call may have been made), while a takeover of
// a record that may have acted stays as it was: held under its lease.
func TestClaimManyThatFailsHalfWayGivesBackItsClaims(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	// "maybe": a record whose call may have acted, its lease expired.
	first, err := b.store.Claim(b.ctx, claimReq("maybe"))
	require.NoError(t, err)
	b.clock.Advance(2 * time.Minute)

	db := &failSecondClaim{Pool: b.pool, hide: "hidden"}
	store, err := pgguard.New(db, &pgguard.Config{Now: b.clock.Now})
	require.NoError(t, err)
	takeover := claimReq("maybe")
	takeover.TakeOver = true
	_, err = store.ClaimMany(b.ctx, []idempotency.ClaimRequest{claimReq("fresh"), takeover, claimReq("hidden")})
	require.ErrorIs(t, err, errSecondClaim)
	require.Equal(t, 2, db.claims)

	recs, err := b.store.Lookup(b.ctx, []string{"fresh", "maybe"})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateReleased, recs["fresh"].State, "given back: nothing was called")
	require.Contains(t, recs["fresh"].Reason, "claim batch failed before any call")
	require.Contains(t, recs["fresh"].Reason, errSecondClaim.Error())
	require.True(t, recs["fresh"].DueAt.IsZero(), "free at once")
	require.Equal(t, idempotency.StateCalling, recs["maybe"].State, "a takeover of a record that may have acted stays held")
	require.Greater(t, recs["maybe"].Token, first.Record.Token)

	// The next claim of the given-back key acquires it at once.
	again, err := b.store.Claim(b.ctx, claimReq("fresh"))
	require.NoError(t, err)
	require.Equal(t, idempotency.VerdictAcquired, again.Verdict)
}
