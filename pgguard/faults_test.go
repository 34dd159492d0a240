package pgguard_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// Faults in the middle of a claim or a completion: each must end in an
// error and leave either no record or a pending one whose lease will
// expire. Never an applied record without a result, never a lost one.

// requireLedgerSane checks the invariants that must hold whatever failed.
func requireLedgerSane(t *testing.T, b *bundle) {
	t.Helper()
	var bad int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM effect_ledger
		WHERE (state IN ('applied', 'skipped') AND result IS NULL)
		   OR claims < 1 OR (state IN ('claimed', 'calling', 'reconciling') AND lease_until IS NULL)`).Scan(&bad))
	require.Zero(t, bad)
}

func ledgerRows(t *testing.T, b *bundle) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM effect_ledger").Scan(&n))
	return n
}

// blockKey claims key in a transaction of its own and keeps it open, so that
// another claim of key waits on it. The returned function ends it.
func blockKey(t *testing.T, b *bundle, key string) (end func(commit bool)) {
	t.Helper()
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	s, err := b.store.WithDB(tx)
	require.NoError(t, err)
	c, err := s.Claim(b.ctx, claimReq(key))
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds())
	var done bool
	end = func(commit bool) {
		if done {
			return
		}
		done = true
		if commit {
			require.NoError(t, tx.Commit(b.ctx))
		} else {
			require.NoError(t, tx.Rollback(b.ctx))
		}
	}
	t.Cleanup(func() { end(false) })
	return end
}

// claimInBackground starts a claim of key and returns its result channel.
func claimInBackground(ctx context.Context, s *pgguard.Store, key string) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := s.Claim(ctx, claimReq(key))
		ch <- err
	}()
	return ch
}

// TestClaimCancelledWhileBlocked cancels a claim that waits for another
// transaction's claim of the same key.
//
// With pgx's default context handling the connection is simply closed: the
// server does not hear of it, and the orphaned statement may still insert
// its claim once the lock is free. That leaves a pending record nobody
// holds, which expires like any abandoned claim. With pgconn's
// CancelRequestContextWatcherHandler the server cancels the statement and
// nothing is written.
func TestClaimCancelledWhileBlocked(t *testing.T) {
	t.Parallel()
	cancelWhileBlocked := func(t *testing.T, b *bundle) {
		t.Helper()
		end := blockKey(t, b, "k")
		ctx, cancel := context.WithCancel(b.ctx)
		done := claimInBackground(ctx, b.store, "k")
		waitForLockWaiters(t, b, 1)
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
		end(false)
		// Let an orphaned statement, if any, finish.
		require.Eventually(t, func() bool {
			var n int
			err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE application_name = $1 AND pid <> pg_backend_pid() AND state = 'active'`, b.schema).Scan(&n)
			return err == nil && n == 0
		}, 10*time.Second, 5*time.Millisecond)
		requireLedgerSane(t, b)
	}

	t.Run("DefaultHandlerMayLeaveAnUnheldClaim", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		cancelWhileBlocked(t, b)
		switch ledgerRows(t, b) {
		case 0:
		case 1:
			got, err := b.store.Lookup(b.ctx, []string{"k"})
			require.NoError(t, err)
			rec := got["k"]
			require.Equal(t, idempotency.StateCalling, rec.State)
			require.True(t, b.clock.Now().Add(time.Minute).Equal(rec.LeaseUntil), "an orphaned claim holds an ordinary lease: %v", rec.LeaseUntil)
			b.clock.Advance(2 * time.Minute)
		default:
			t.Fatal("more than one record for one key")
		}
		r := claimReq("k")
		r.TakeOver = true
		c, err := b.store.Claim(b.ctx, r)
		require.NoError(t, err)
		require.True(t, c.Verdict.Holds(), "whatever the orphan did, the key is claimable once its lease expires")
	})

	t.Run("CancelRequestHandlerWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{configure: func(c *pgxpool.Config) {
			c.ConnConfig.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
				// The server's cancel, not a timer, must end the claim:
				// past DeadlineDelay pgx closes the connection instead
				// and the orphaned claim may still be written, so give
				// a loaded machine all the time it needs.
				return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: time.Minute}
			}
		}})
		cancelWhileBlocked(t, b)
		require.Zero(t, ledgerRows(t, b), "the server cancelled the claim, the blocker rolled back")
		c, err := b.store.Claim(b.ctx, claimReq("k"))
		require.NoError(t, err)
		require.True(t, c.Verdict.Holds())
	})
}

// timedStore returns b's store on a connection of its own whose
// statement_timeout is d, for the one statement under test. A pool-wide
// timeout would also cancel Migrate and the test's own statements when a
// loaded machine makes them slow; the statement under test waits for
// another transaction that outlives it, so only the timeout can end it,
// however slow the machine. The connection is closed when t ends.
func timedStore(t *testing.T, b *bundle, d time.Duration) *pgguard.Store {
	t.Helper()
	conn, err := b.pool.Acquire(b.ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Hijack().Close(context.Background()) })
	_, err = conn.Exec(b.ctx, fmt.Sprintf("SET statement_timeout = %d", d.Milliseconds()))
	require.NoError(t, err)
	s, err := b.store.WithDB(conn)
	require.NoError(t, err)
	return s
}

func TestClaimStatementTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	end := blockKey(t, b, "k")
	const timeout = 300 * time.Millisecond
	timed := timedStore(t, b, timeout)
	start := time.Now()
	_, err := timed.Claim(b.ctx, claimReq("k"))
	requirePgCode(t, err, pgerrcode.QueryCanceled)
	require.GreaterOrEqual(t, time.Since(start), timeout, "the claim waited for the blocker until its timeout")
	end(true)
	require.Equal(t, 1, ledgerRows(t, b), "only the blocker's claim exists")
	requireLedgerSane(t, b)
	c, err := b.store.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	require.False(t, c.Verdict.Holds(), "the blocker's live claim is in flight")
}

func TestClaimConnectionTerminated(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	end := blockKey(t, b, "k")
	done := claimInBackground(b.ctx, b.store, "k")
	waitForLockWaiters(t, b, 1)
	admin := pgtest.AdminPool(t)
	var killed int
	require.NoError(t, admin.QueryRow(b.ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND wait_event_type = 'Lock'`, b.schema).Scan(&killed))
	require.Equal(t, 1, killed)
	require.Error(t, <-done)
	end(false)
	require.Zero(t, ledgerRows(t, b))
	c, err := b.store.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds())
}

// completeFault claims a key, then completes it with a hook that triggers a
// fault; the claim must survive, pending and held, and expire as usual.
func completeFault(t *testing.T, b *bundle, hook func(ctx context.Context, tx pgx.Tx) error) error {
	t.Helper()
	c, err := b.store.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	require.True(t, c.Verdict.Holds())
	change := idempotency.Complete("k", c.Record.Token, []byte(`"promo_1"`))
	change.Hook = func(ctx context.Context) error {
		tx, ok := pgguard.TxFrom(ctx)
		require.True(t, ok, "the hook runs in the ledger's transaction")
		return hook(ctx, tx)
	}
	_, err = b.store.Transition(b.ctx, change)
	require.Error(t, err)

	got, err := b.store.Lookup(b.ctx, []string{"k"})
	require.NoError(t, err)
	rec := got["k"]
	require.Equal(t, idempotency.StateCalling, rec.State)
	require.Equal(t, c.Record.Token, rec.Token)
	require.Nil(t, rec.Result)
	require.False(t, rec.LeaseUntil.IsZero(), "the lease still runs and will expire")
	requireLedgerSane(t, b)

	// After the lease, the next run decides by its policy.
	b.clock.Advance(2 * time.Minute)
	park, err := b.store.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	require.Equal(t, idempotency.VerdictInDoubt, park.Verdict, "without takeover the call may have acted: in doubt")
	r := claimReq("k")
	r.TakeOver = true
	retry, err := b.store.Claim(b.ctx, r)
	require.NoError(t, err)
	require.True(t, retry.Verdict.Holds())
	require.Equal(t, 2, retry.Record.Claims)
	return err
}

func TestCompleteConnectionTerminatedInHook(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	admin := pgtest.AdminPool(t)
	completeFault(t, b, func(ctx context.Context, tx pgx.Tx) error {
		var pid int32
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			return err
		}
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT pg_sleep(5)")
		return err
	})
}

func TestCompleteStatementTimeoutInHook(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	completeFault(t, b, func(ctx context.Context, tx pgx.Tx) error {
		// The timeout covers the hook's statement only (SET LOCAL ends
		// with the completion's transaction), not Migrate or the claim,
		// which a loaded machine may slow past 200 ms. pg_sleep looks
		// for a cancel before it looks at the clock, so the timeout
		// wins however late the backend gets to run.
		if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = 200"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT pg_sleep(2)")
		requirePgCode(t, err, pgerrcode.QueryCanceled)
		return err
	})
}

func TestCompleteContextCancelledInHook(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	c, err := b.store.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(b.ctx)
	change := idempotency.Complete("k", c.Record.Token, []byte("1"))
	change.Hook = func(ctx context.Context) error {
		cancel()
		return nil // the hook "succeeded"; the commit cannot
	}
	_, err = b.store.Transition(ctx, change)
	require.ErrorIs(t, err, context.Canceled)
	got, err := b.store.Lookup(b.ctx, []string{"k"})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateCalling, got["k"].State)
	requireLedgerSane(t, b)
}

func TestCompleteBlockedByLockTimesOut(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	c, err := b.store.Claim(b.ctx, claimReq("k"))
	require.NoError(t, err)
	// An operator's transaction holds the row.
	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(b.ctx) }()
	_, err = tx.Exec(b.ctx, "SELECT 1 FROM effect_ledger WHERE key = 'k' FOR UPDATE")
	require.NoError(t, err)
	_, err = timedStore(t, b, 300*time.Millisecond).Transition(b.ctx, idempotency.Complete("k", c.Record.Token, []byte("1")))
	requirePgCode(t, err, pgerrcode.QueryCanceled)
	require.NoError(t, tx.Rollback(b.ctx))
	// Nothing was lost: the worker can still complete under its token.
	rec, err := b.store.Transition(b.ctx, idempotency.Complete("k", c.Record.Token, []byte("1")))
	require.NoError(t, err)
	require.Equal(t, idempotency.StateApplied, rec.State)
}

// TestRunWithDeadDatabaseLosesNothing: the executor over a store whose
// completion fails reports an error, and the record stays pending.
func TestRunCompletionFailureLeavesPendingRecord(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	x, err := idempotency.NewExecutor(b.store, nil)
	require.NoError(t, err)
	ks := idempotency.KeySpace{Namespace: "faults"}
	boom := errors.New("domain row refused")
	var calls int
	eff := &idempotency.Effect[string, string]{
		Name: "faults",
		Key:  func(in string) (idempotency.Key, error) { return ks.Key(idempotency.Str("id", in)) },
		Call: func(context.Context, idempotency.Key, string) (string, error) { calls++; return "promo", nil },
		OnComplete: func(context.Context, string, string) error {
			return boom
		},
	}
	res, err := idempotency.Run(b.ctx, x, eff, "u1")
	require.ErrorIs(t, err, boom)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	got, err := b.store.Lookup(b.ctx, []string{res.Key.String()})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateCalling, got[res.Key.String()].State)
	// The next delivery sees a live claim: no second provider call.
	res, err = idempotency.Run(b.ctx, x, eff, "u1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeInFlight, res.Outcome)
	require.Equal(t, 1, calls)
	requireLedgerSane(t, b)
}
