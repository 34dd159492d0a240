package proof

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/internal/pgtest"
	"github.com/effectonce/effectonce/pgguard"
)

// envRestartCmd names a shell command that restarts the test PostgreSQL
// server, for TestPostgresRestartBetweenSweeps.
const envRestartCmd = "PROOF_PG_RESTART_CMD"

// TestPostgresRestartBetweenSweeps sweeps half of 40 intents, restarts the
// PostgreSQL server (the command in PROOF_PG_RESTART_CMD), waits for the
// same pool to reconnect, and sweeps all 40: 40 objects, 40 applied rows,
// one executed request per key, nothing swept twice. The ledger uses the
// database's own clock here (no fake clock).
//
// It restarts the server every other test uses, so it is not parallel (no
// other test of this package runs meanwhile) and must run in a go test
// invocation of its own, after or before every other package's tests:
//
//	PROOF_PG_RESTART_CMD='pg_ctlcluster --skip-systemctl-redirect 15 main restart' \
//	  go test -race -count=1 -run '^TestPostgresRestartBetweenSweeps$' ./internal/proof/
func TestPostgresRestartBetweenSweeps(t *testing.T) {
	restart := os.Getenv(envRestartCmd)
	if restart == "" {
		t.Skip(envRestartCmd + " is not set: set it to a shell command that restarts the test PostgreSQL server to run this test")
	}
	const n = 40
	ctx := context.Background()
	dsn := pgtest.ConnString(t)
	pool := poolWith(t, dsn, nil)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	store, err := pgguard.New(pool, nil)
	require.NoError(t, err)
	x, err := idempotency.NewExecutor(store, nil)
	require.NoError(t, err)
	fake := newFake(t)
	eff := promoEffect(fake.URL(), 0)
	eff.Retry = &idempotency.RetryPolicy{MaxAttempts: 1}
	all := intents(n)

	rep, err := sweep.Run(ctx, x, eff, sweep.Slice(all[:n/2]), &sweep.Config{Concurrency: 4})
	require.NoError(t, err)
	require.Empty(t, rep.Failures, "%s", rep.String())
	requireAllApplied(t, ctx, pool, n/2)

	var pidBefore int32
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pidBefore))
	start := time.Now()
	out, err := runRestart(ctx, restart)
	require.NoError(t, err, "%s: %s", restart, out)
	took := time.Since(start)

	// The same pool reconnects by itself: dead connections fail their
	// liveness check when acquired and are replaced.
	require.Eventually(t, func() bool {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return pool.Ping(pctx) == nil
	}, 60*time.Second, 100*time.Millisecond, "the pool never reconnected after %q", restart)
	var startedAt time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_postmaster_start_time()`).Scan(&startedAt))
	require.True(t, startedAt.After(start.Add(-time.Second)), "the server really restarted (started at %v, restart issued at %v)", startedAt, start)

	rep, err = sweep.Run(ctx, x, eff, sweep.Slice(all), &sweep.Config{Concurrency: 4})
	require.NoError(t, err)
	require.Empty(t, rep.Failures, "%s", rep.String())
	require.Equal(t, n/2, rep.Outcomes[idempotency.OutcomeAlreadyApplied], "%s", rep.String())
	require.Equal(t, n/2, rep.Outcomes[idempotency.OutcomeApplied], "%s", rep.String())
	requireAllApplied(t, ctx, pool, n)
	posts := requireOnePerKey(t, fake, keysOf(all)...)
	require.Equal(t, n, posts, "one POST per intent: nothing swept twice")
	t.Logf("restart (%v, backend %d before): %d/%d swept before, %s after; %d objects, %d POSTs",
		took.Round(time.Millisecond), pidBefore, n/2, n, rep.String(), fake.CreatedObjects(), posts)
}

// runRestart runs the restart command with a 2-minute limit. Its output
// goes to a file, not a pipe: a server started by the command may inherit
// the command's stdout and keep a pipe open for ever (pg_ctl without -l).
func runRestart(ctx context.Context, command string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	f, err := os.CreateTemp("", "proof-pg-restart-*.log")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	out, _ := os.ReadFile(f.Name())
	return string(out), err
}
