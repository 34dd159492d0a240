package proof

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency/sweep"
)

// envRestartCmd names a shell command that restarts the test PostgreSQL
// server, for TestPostgresRestartBetweenSweeps.
const envRestartCmd = "PROOF_PG_RESTART_CMD"

// TestPostgresRestartBetweenSweeps sweeps half of 40 intents, restarts the
// PostgreSQL server (the command in PROOF_PG_RESTART_CMD), waits for the
// same pool to reconnect, and sweeps all 40 again: 40 objects, 40 applied
// rows, one executed request per key. A pooled connection opened before
// the restart may still fail one statement (pgxpool checks liveness only
// of connections idle for more than a second); such a run ends in an
// error and the next sweep, with the ledger clock past the lease, finishes
// it, as the next tick would.
//
// It restarts the server every other test uses, so it is not parallel (no
// other test of this package runs meanwhile) and must run in a go test
// invocation of its own, never alongside other packages' tests:
//
//	PROOF_PG_RESTART_CMD='pg_ctlcluster --skip-systemctl-redirect 15 main restart' \
//	  go test -race -count=1 -run '^TestPostgresRestartBetweenSweeps$' ./internal/proof/
func TestPostgresRestartBetweenSweeps(t *testing.T) {
	restart := os.Getenv(envRestartCmd)
	if restart == "" {
		t.Skip(envRestartCmd + " is not set: set it to a shell command that restarts the test PostgreSQL server to run this test")
	}
	const n = 40
	r := newRig(t, nil)
	eff := r.effect(attempts(1), 0)
	all := intents(n)

	rep, err := sweep.Run(r.ctx, r.exec, eff, sweep.Slice(all[:n/2]), &sweep.Config{Concurrency: 4})
	require.NoError(t, err)
	require.Empty(t, rep.Failures, "%s", rep.String())
	requireAllApplied(t, r.ctx, r.pool, n/2)

	start := time.Now()
	out, err := runRestart(r.ctx, restart)
	require.NoError(t, err, "%s: %s", restart, out)
	restarted := time.Now()
	took := restarted.Sub(start)
	// pgtest's shared admin pool drops its schema when the test ends, on
	// a connection opened before the restart: give it the idle second
	// after which pgxpool pings (and replaces) a connection instead of
	// failing a statement on it.
	t.Cleanup(func() { time.Sleep(time.Until(restarted.Add(1200 * time.Millisecond))) })

	// The same pool reconnects by itself.
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
		defer cancel()
		return r.pool.Ping(ctx) == nil
	}, 60*time.Second, 50*time.Millisecond, "the pool never reconnected after %q", restart)
	var startedAt time.Time
	require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT pg_postmaster_start_time()`).Scan(&startedAt))
	require.True(t, startedAt.After(start.Add(-time.Second)), "the server really restarted (started %v, restart issued %v)", startedAt, start)

	var reports []string
	for i := 0; i < 4; i++ {
		byStatus, _ := ledgerCounts(t, r.ctx, r.pool)
		if byStatus["applied"] == n {
			break
		}
		if i > 0 {
			r.clock.Advance(10 * time.Minute) // past the lease of a run cut short
		}
		rep, err = sweep.Run(r.ctx, r.exec, eff, sweep.Slice(all), &sweep.Config{Concurrency: 4})
		reports = append(reports, rep.String())
		if err != nil {
			reports = append(reports, "sweep error: "+err.Error())
		}
	}
	requireAllApplied(t, r.ctx, r.pool, n)
	posts := requireOnePerKey(t, r.fake, keysOf(all)...)
	for _, in := range all {
		r.requireApplied(keyOf(in.ID))
	}
	t.Logf("restart took %v; %d/%d swept before; after: %q; %d objects for %d intents, %d POSTs",
		took.Round(time.Millisecond), n/2, n, reports, r.fake.CreatedObjects(), n, posts)
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
