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

// Every handle a caller may hold satisfies DBTX.
var (
	_ pgguard.DBTX = (*pgxpool.Pool)(nil)
	_ pgguard.DBTX = (*pgxpool.Conn)(nil)
	_ pgguard.DBTX = (*pgx.Conn)(nil)
	_ pgguard.DBTX = pgx.Tx(nil)
)

func TestNewRejectsNilDB(t *testing.T) {
	t.Parallel()
	_, err := pgguard.New(nil, nil)
	require.ErrorIs(t, err, pgguard.ErrNilDB)
	var pool *pgxpool.Pool
	_, err = pgguard.New(pool, nil) // a nil pointer in the interface
	require.ErrorIs(t, err, pgguard.ErrNilDB)
	var tx pgx.Tx
	_, err = pgguard.New(tx, nil)
	require.ErrorIs(t, err, pgguard.ErrNilDB)
	require.ErrorIs(t, pgguard.Migrate(context.Background(), pool, nil), pgguard.ErrNilDB)
	require.ErrorIs(t, pgguard.MigrateTx(context.Background(), tx, nil), pgguard.ErrNilDB)
}

func TestNewRejectsInvalidIdentifiers(t *testing.T) {
	t.Parallel()
	// New checks names before it touches the database: any non-nil handle
	// will do.
	db := &pgxpool.Pool{}
	for name, cfg := range map[string]pgguard.Config{
		"TableTooLong":       {Table: strings.Repeat("t", 51)},
		"SchemaTooLong":      {Schema: strings.Repeat("s", 64)},
		"TableWithNUL":       {Table: "effect\x00ledger"},
		"SchemaInvalidUTF8":  {Schema: "s\xffs"},
		"TableInvalidUTF8":   {Table: "\xc3("},
		"MultibyteOver63":    {Schema: strings.Repeat("é", 32)}, // 64 bytes
		"TableWithNULQuoted": {Table: "\"\x00\""},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := pgguard.New(db, &cfg)
			require.ErrorIs(t, err, pgguard.ErrInvalidIdentifier)
			var ie *pgguard.IdentifierError
			require.ErrorAs(t, err, &ie)
			require.NotEmpty(t, ie.Reason)
			require.ErrorIs(t, pgguard.Migrate(context.Background(), db, &cfg), pgguard.ErrInvalidIdentifier)
		})
	}
	for name, cfg := range map[string]pgguard.Config{
		"Defaults":        {},
		"Table50Bytes":    {Table: strings.Repeat("t", 50)},
		"Schema63Bytes":   {Schema: strings.Repeat("s", 63)},
		"QuotesAndSpaces": {Schema: `my "schema"`, Table: `it's a "table"; DROP TABLE x; --`},
		"UpperCase":       {Table: "EffectLedger"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := pgguard.New(db, &cfg)
			require.NoError(t, err)
		})
	}
}

// TestQuotedNamesLandWhereConfigured checks the objects Migrate creates for
// names with spaces, double quotes and a single quote, and that the store
// works there.
func TestQuotedNamesLandWhereConfigured(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	schema := `a "b" c ` + b.schema[len(b.schema)-16:]
	_, err := b.pool.Exec(b.ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = b.pool.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	table := `it's "the" ledger`
	cfg := &pgguard.Config{Schema: schema, Table: table, Now: b.clock.Now}
	require.NoError(t, pgguard.Migrate(b.ctx, b.pool, cfg))
	s, err := pgguard.New(b.pool, cfg)
	require.NoError(t, err)

	c, err := s.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds())
	_, err = s.Transition(b.ctx, idempotency.Complete("k", c.Record.Token, []byte("1")))
	require.NoError(t, err)

	rows, err := b.pool.Query(b.ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 ORDER BY 1`, schema)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{
		table, table + "_active_key", table + "_claimed", table + "_exempt", table + "_finished", table + "_id_seq", table + "_migrations",
		table + "_migrations_pkey", table + "_pkey", table + "_stuck", table + "_token_seq",
	}, got)

	var n int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, table}.Sanitize()+" WHERE state = 'applied'").Scan(&n))
	require.Equal(t, 1, n)
	rows, err = b.pool.Query(b.ctx, `SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = $1 ORDER BY 1`, schema)
	require.NoError(t, err)
	got, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{table + "_claim", table + "_decide"}, got, "the claim functions of migration 003, renamed")
	// Nothing landed in the search_path schema but the default ledger.
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM effect_ledger").Scan(&n))
	require.Equal(t, 0, n)
}

// TestLongestTableName: a 50-byte table name and every name derived from it
// fit PostgreSQL's limit.
func TestLongestTableName(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	cfg := &pgguard.Config{Table: strings.Repeat("L", 50)}
	require.NoError(t, pgguard.Migrate(b.ctx, b.pool, cfg))
	require.NoError(t, pgguard.Migrate(b.ctx, b.pool, cfg))
	s, err := pgguard.New(b.pool, cfg)
	require.NoError(t, err)
	c, err := s.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds())
	var idx string
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT indexname FROM pg_indexes WHERE tablename = $1 AND indexname LIKE '%active_key'`, cfg.Table).Scan(&idx))
	require.Equal(t, cfg.Table+"_active_key", idx)
}

// TestStatementCounts measures round trips through a QueryTracer: the
// numbers the design promises, counted, not timed.
func TestStatementCounts(t *testing.T) {
	t.Parallel()
	var counter pgcount.StatementCounter
	b := setup(t, &setupOpts{configure: counter.Configure})
	_, err := b.pool.Exec(b.ctx, `CREATE TABLE grants (user_id bigint NOT NULL, code text NOT NULL)`)
	require.NoError(t, err)

	x, err := idempotency.NewExecutor(b.store, nil)
	require.NoError(t, err)
	ks := idempotency.KeySpace{Namespace: "count"}
	var calls int
	eff := &idempotency.Effect[string, string]{
		Name: "count",
		Key:  func(in string) (idempotency.Key, error) { return ks.Key(idempotency.Str("id", in)) },
		Call: func(context.Context, idempotency.Key, string) (string, error) { calls++; return "code", nil },
	}
	measure := func(fn func()) int {
		n, stmts := counter.Measure(fn)
		for i, s := range stmts {
			stmts[i], _, _ = strings.Cut(strings.TrimSpace(s), "\n")
		}
		t.Logf("%d statements: %q", n, stmts)
		return n
	}

	require.Equal(t, 2, measure(func() {
		res, err := idempotency.Run(b.ctx, x, eff, "first")
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	}), "first-time run: claim + complete")
	require.Equal(t, 1, measure(func() {
		res, err := idempotency.Run(b.ctx, x, eff, "first")
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	}), "repeat: the claim statement returns the stored result")
	require.Equal(t, 1, calls)

	withHook := *eff
	withHook.OnComplete = pgguard.OnComplete(func(ctx context.Context, tx pgx.Tx, in, out string) error {
		_, err := tx.Exec(ctx, "INSERT INTO grants (user_id, code) VALUES (1, $1)", out)
		return err
	})
	require.Equal(t, 5, measure(func() {
		_, err := idempotency.Run(b.ctx, x, &withHook, "hooked")
		require.NoError(t, err)
	}), "first-time run with a hook: claim + BEGIN, complete, hook insert, COMMIT")

	uncalled := *eff
	uncalled.Expired = idempotency.ExpiredRetryUncalled
	require.Equal(t, 3, measure(func() {
		_, err := idempotency.Run(b.ctx, x, &uncalled, "uncalled")
		require.NoError(t, err)
	}), "ExpiredRetryUncalled: claim + mark calling + complete")

	failing := *eff
	failing.Call = func(context.Context, idempotency.Key, string) (string, error) {
		return "", idempotency.NotActed(errors.New("429"), 0)
	}
	require.Equal(t, 2, measure(func() {
		_, err := idempotency.Run(b.ctx, x, &failing, "failing")
		require.ErrorIs(t, err, idempotency.ErrRetryable)
	}), "retryable failure: claim + release")

	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("count:v1:id=%d", i)
	}
	keys[0] = ks.MustKey(idempotency.Str("id", "first")).String()
	require.Equal(t, 1, measure(func() {
		got, err := b.store.Lookup(b.ctx, keys)
		require.NoError(t, err)
		require.Len(t, got, 1)
	}), "Lookup of 1000 keys")
	require.Equal(t, 0, measure(func() {
		got, err := b.store.Lookup(b.ctx, nil)
		require.NoError(t, err)
		require.Empty(t, got)
	}), "Lookup of no keys")
	require.Equal(t, 1, measure(func() {
		_, err := b.store.ListStuck(b.ctx, idempotency.ListStuckRequest{})
		require.NoError(t, err)
	}))
}

// TestRepeatClaimWritesNothing: the repeat path neither updates nor locks
// the row (same tuple, no xmax), so repeats leave no dead tuples behind and
// never queue behind each other.
func TestRepeatClaimWritesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	c, err := b.store.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	tuple := func() string {
		var s string
		require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT ctid::text || '/' || xmin::text || '/' || xmax::text FROM effect_ledger").Scan(&s))
		return s
	}
	live := tuple()
	for range 3 {
		again, err := b.store.Claim(b.ctx, claimReq("k"))
		require.NoError(t, err)
		require.False(t, again.Verdict.Holds())
	}
	require.Equal(t, live, tuple(), "a claim meeting a live lease must not touch the row")

	_, err = b.store.Transition(b.ctx, idempotency.Complete("k", c.Record.Token, []byte("1")))
	require.NoError(t, err)
	done := tuple()
	for range 3 {
		again, err := b.store.Claim(b.ctx, claimReq("k"))
		require.NoError(t, err)
		require.Equal(t, idempotency.VerdictDone, again.Verdict)
	}
	require.Equal(t, done, tuple(), "a claim meeting an applied record must not touch the row")
	require.True(t, strings.HasSuffix(done, "/0"), "no lock was taken: xmax is 0, got %s", done)
}

func TestTokensAreUniqueAndIncreasing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	var tokens []int64
	for i := range 6 {
		r := claimReq(fmt.Sprintf("k%d", i%2))
		r.TakeOver = true
		c, err := b.store.Claim(b.ctx, r)
		require.NoError(t, err)
		require.True(t, c.Verdict.Holds())
		if len(tokens) > 0 {
			require.Greater(t, c.Record.Token, tokens[len(tokens)-1])
		}
		tokens = append(tokens, c.Record.Token)
		b.clock.Advance(2 * time.Minute) // expire, so the next claim of the key takes it over
	}
	// Repeats that do not acquire draw no token.
	c, err := b.store.Claim(b.ctx, claimReq("k0"))
	require.NoError(t, err)
	require.Equal(t, idempotency.VerdictInDoubt, c.Verdict)
	c, err = b.store.Claim(b.ctx, claimReq("fresh"))
	require.NoError(t, err)
	require.Equal(t, tokens[len(tokens)-1]+1, c.Record.Token)
}

// TestClaimSnapshotRace: many goroutines claim a key while another
// transaction holds the key's row uncommitted. When it commits, each blocked
// claim saw the conflict but not the row (it was committed after the
// claim's snapshot). The store must re-run the statement and return the
// row, never "no rows", and never take over a live claim.
func TestClaimSnapshotRace(t *testing.T) {
	t.Parallel()
	const n = 12
	big := func(c *pgxpool.Config) { c.MaxConns = n + 4 }

	race := func(t *testing.T, b *bundle, r idempotency.ClaimRequest, holder func(s *pgguard.Store) int64) []idempotency.Claim {
		t.Helper()
		tx, err := b.pool.Begin(b.ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(b.ctx) }()
		inTx, err := b.store.WithDB(tx)
		require.NoError(t, err)
		holder(inTx)

		claims := make([]idempotency.Claim, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				claims[i], errs[i] = b.store.Claim(b.ctx, r)
			}()
		}
		waitForLockWaiters(t, b, n)
		require.NoError(t, tx.Commit(b.ctx))
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		return claims
	}

	t.Run("FirstClaimCommitting", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{configure: big})
		var token int64
		claims := race(t, b, claimReq("k"), func(s *pgguard.Store) int64 {
			c, err := s.Claim(b.ctx, claimReq("k"))
			require.NoError(t, err)
			require.True(t, c.Verdict.Holds())
			token = c.Record.Token
			return token
		})
		for _, c := range claims {
			require.Equal(t, idempotency.VerdictInFlight, c.Verdict)
			require.Equal(t, token, c.Record.Token)
		}
		require.Positive(t, pgguard.ClaimRetries(b.store), "the race did not happen: no claim had to re-run")
	})

	t.Run("TakeoverCommitting", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{configure: big})
		r := claimReq("k")
		r.TakeOver = true
		_, err := b.store.Claim(b.ctx, r)
		require.NoError(t, err)
		b.clock.Advance(2 * time.Minute)
		var token int64
		claims := race(t, b, r, func(s *pgguard.Store) int64 {
			c, err := s.Claim(b.ctx, r)
			require.NoError(t, err)
			require.True(t, c.Verdict.Holds())
			token = c.Record.Token
			return token
		})
		for _, c := range claims {
			// The snapshot showed an expired claim; the committed takeover
			// holds a live one: in flight, not acquired, not stuck.
			require.Equal(t, idempotency.VerdictInFlight, c.Verdict)
			require.Equal(t, token, c.Record.Token)
			require.Equal(t, 2, c.Record.Claims)
		}
		require.Positive(t, pgguard.ClaimRetries(b.store))
	})

	t.Run("CompletionCommitting", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{configure: big})
		r := claimReq("k")
		r.TakeOver = true
		first, err := b.store.Claim(b.ctx, r)
		require.NoError(t, err)
		b.clock.Advance(2 * time.Minute) // expired: the racers will try to take it over
		claims := race(t, b, r, func(s *pgguard.Store) int64 {
			_, err := s.Transition(b.ctx, idempotency.Complete("k", first.Record.Token, []byte(`"late but ours"`)))
			require.NoError(t, err)
			return first.Record.Token
		})
		for _, c := range claims {
			require.Equal(t, idempotency.VerdictDone, c.Verdict)
			require.Equal(t, `"late but ours"`, string(c.Record.Result))
		}
	})

	t.Run("FailureCommitting", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{configure: big})
		first, err := b.store.Claim(b.ctx, claimReq("k"))
		require.NoError(t, err)
		// Released, so the racers' snapshots show a free record, while the
		// holding transaction settles it as failed.
		_, err = b.store.Transition(b.ctx, idempotency.Release("k", first.Record.Token, "429", 0))
		require.NoError(t, err)
		claims := race(t, b, claimReq("k"), func(s *pgguard.Store) int64 {
			_, err := s.Settle(b.ctx, idempotency.SettleRequest{Key: "k", Token: first.Record.Token, State: idempotency.StateFailed, Reason: "declined"})
			require.NoError(t, err)
			return 0
		})
		// The failed record frees the key: exactly one racer gets it.
		var won int
		for _, c := range claims {
			if c.Verdict.Holds() {
				won++
			}
		}
		require.Equal(t, 1, won)
	})
}

// TestStoreInCallerTransaction: with a pgx.Tx, claims and completions join
// the caller's transaction; the hook runs in a savepoint, and a failing hook
// leaves the caller's transaction usable.
func TestStoreInCallerTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	_, err := b.pool.Exec(b.ctx, `CREATE TABLE grants (user_id bigint PRIMARY KEY)`)
	require.NoError(t, err)

	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(b.ctx) }()
	s, err := b.store.WithDB(tx)
	require.NoError(t, err)
	c, err := s.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds())

	boom := errors.New("hook failed")
	_, err = s.Transition(b.ctx, hooked(idempotency.Complete("k", c.Record.Token, []byte("1")), func(ctx context.Context, htx pgx.Tx) error {
		_, err := htx.Exec(ctx, "INSERT INTO grants VALUES (1)")
		require.NoError(t, err)
		return boom
	}))
	require.ErrorIs(t, err, boom)
	// The savepoint was rolled back, the caller's transaction still works.
	got, err := s.Lookup(b.ctx, []string{"k"})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateCalling, got["k"].State)

	_, err = s.Transition(b.ctx, hooked(idempotency.Complete("k", c.Record.Token, []byte("1")), func(ctx context.Context, htx pgx.Tx) error {
		_, err := htx.Exec(ctx, "INSERT INTO grants VALUES (1)")
		return err
	}))
	require.NoError(t, err)

	// Nothing is visible outside before the caller commits.
	outside, err := b.store.Lookup(b.ctx, []string{"k"})
	require.NoError(t, err)
	require.Empty(t, outside)
	require.NoError(t, tx.Commit(b.ctx))
	outside, err = b.store.Lookup(b.ctx, []string{"k"})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateApplied, outside["k"].State)
	var n int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM grants").Scan(&n))
	require.Equal(t, 1, n)
}

// hooked sets a hook that gets the ledger's transaction.
func hooked(c idempotency.Change, fn func(ctx context.Context, tx pgx.Tx) error) idempotency.Change {
	c.Hook = func(ctx context.Context) error {
		tx, ok := pgguard.TxFrom(ctx)
		if !ok {
			return pgguard.ErrNoTx
		}
		return fn(ctx, tx)
	}
	return c
}

// TestAppliedRecordAlwaysHasAResult: an empty result is stored as empty
// (the effect happened), never as missing, and the table refuses an
// applied row without one, whoever writes it.
func TestAppliedRecordAlwaysHasAResult(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	c, err := b.store.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	rec, err := b.store.Transition(b.ctx, idempotency.Change{Key: "k", Token: c.Record.Token, To: idempotency.StateApplied, By: idempotency.ByHolder})
	require.NoError(t, err)
	require.NotNil(t, rec.Result)
	require.Empty(t, rec.Result)
	_, err = b.pool.Exec(b.ctx, "UPDATE effect_ledger SET result = NULL")
	requirePgCode(t, err, "23514") // check_violation
	got, err := b.store.Lookup(b.ctx, []string{"k"})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateApplied, got["k"].State)
	require.Equal(t, []byte{}, got["k"].Result)
}

func TestBadRequestsAreTypedErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	_, err := b.store.Claim(b.ctx, idempotency.ClaimRequest{Key: "", Lease: time.Minute})
	require.Error(t, err)
	_, err = b.store.Claim(b.ctx, idempotency.ClaimRequest{Key: "k"})
	require.Error(t, err)
	_, err = b.store.Transition(b.ctx, idempotency.Change{Key: "k", Token: 1, To: "exploded", By: idempotency.ByHolder})
	require.ErrorIs(t, err, idempotency.ErrInvalidTransition)
	_, err = b.store.Settle(b.ctx, idempotency.SettleRequest{Key: "k", Token: 1, State: idempotency.StateCalling})
	require.ErrorIs(t, err, idempotency.ErrInvalidTransition)
	require.Zero(t, ledgerRows(t, b))
}

// TestDatabaseClock: without Config.Now, the store reads the database's
// clock, so leases are relative to the server's time.
func TestDatabaseClock(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s, err := pgguard.New(b.pool, nil)
	require.NoError(t, err)
	// The claim reads the database's clock between two reads of our own,
	// however long a loaded machine takes between them.
	var before, after time.Time
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT clock_timestamp()").Scan(&before))
	c, err := s.Claim(b.ctx, idempotency.ClaimRequest{Key: "k", Lease: time.Hour})
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds())
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT clock_timestamp()").Scan(&after))
	within := func(got, lo, hi time.Time) {
		t.Helper()
		require.False(t, got.Before(lo) || got.After(hi), "%v not within [%v, %v]", got, lo, hi)
	}
	within(c.Record.FirstClaimedAt, before, after)
	within(c.Record.LeaseUntil, before.Add(time.Hour), after.Add(time.Hour))

	short := idempotency.ClaimRequest{Key: "short", Lease: time.Millisecond, TakeOver: true}
	c, err = s.Claim(b.ctx, short)
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds())
	time.Sleep(5 * time.Millisecond)
	c, err = s.Claim(b.ctx, short)
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds(), "an expired lease on the database clock is taken over")
	require.Equal(t, 2, c.Record.Claims)
}
