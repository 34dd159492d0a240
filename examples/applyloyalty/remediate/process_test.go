package remediate

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/stripeeffect"
)

// The child process: the test binary run again with these variables set.
const (
	envChild     = "REMEDIATE_TEST_CHILD"
	envDSN       = "REMEDIATE_TEST_DSN"
	envStripeURL = "REMEDIATE_TEST_STRIPE_URL"
	envMailURL   = "REMEDIATE_TEST_MAIL_URL"
	envKillNS    = "REMEDIATE_TEST_KILL_NAMESPACE"
	envKillAt    = "REMEDIATE_TEST_KILL_AT"
)

// childMain runs the remediation with the fixture's settings and kills its
// own process (SIGKILL) at the envKillAt-th completion of envKillNS, before
// the ledger records it, with the other workers of the sweep mid-flight.
func childMain() int {
	ctx := context.Background()
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "child:", err); return 2 }
	pool, err := pgxpool.New(ctx, os.Getenv(envDSN))
	if err != nil {
		return fail(err)
	}
	at, err := strconv.Atoi(os.Getenv(envKillAt))
	if err != nil {
		return fail(err)
	}
	die := func() {
		p, _ := os.FindProcess(os.Getpid())
		_ = p.Kill()
		for {
			time.Sleep(time.Second) // until the signal lands
		}
	}
	r, err := New(Config{
		DB:         pool,
		Stripe:     stripeeffect.NewAPI(stripeAPIKey, &stripeeffect.APIConfig{URL: os.Getenv(envStripeURL)}),
		Mail:       Mail{Endpoint: os.Getenv(envMailURL), APIKey: mailAPIKey, From: mailFrom},
		Credit:     Credit{Amount: creditAmount, Currency: "usd"},
		Recipients: RecipientsQuery(pool, recipientsSQL),
		Now:        clocktest.New().Now, // the parent's clock starts at the same instant
		Progress:   os.Stdout,
		wrapStore: func(s idempotency.Store) idempotency.Store {
			return &killingStore{Store: s, namespace: os.Getenv(envKillNS), after: at, kill: die}
		},
	})
	if err != nil {
		return fail(err)
	}
	rep, err := r.Run(ctx, incident)
	fmt.Println(rep)
	if err != nil {
		return fail(err)
	}
	return 0 // never reached when the kill point is
}

// TestKilledProcessThenRerunEndsInTheSameState kills a real remediation
// process with SIGKILL in the middle of the credit step, its sweep running 8
// workers, then runs again in this process: at once (the dead process's
// live claims are waited for), and after their lease (taken over under the
// same keys; Stripe replays what it did).
func TestKilledProcessThenRerunEndsInTheSameState(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.seedIncident(t)
	f.migrate(t)
	before, seeded := f.rows(t), f.calls()

	var out bytes.Buffer
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", envDSN+"="+f.dsn, envStripeURL+"="+f.fake.URL(),
		envMailURL+"="+f.mail.endpoint(), envKillNS+"="+CreditKeys.Namespace, envKillAt+"=12")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	require.Error(t, err, "the child must die:\n%s", out.String())
	require.Equal(t, -1, cmd.ProcessState.ExitCode(), "killed by a signal, not exited:\n%s", out.String())
	t.Logf("child (%s):\n%s", cmd.ProcessState, out.String())

	r := f.remediation(t, nil)
	rep, err := r.Run(f.ctx, incident)
	require.NoError(t, err)
	t.Logf("run again at once:\n%s", rep)
	require.False(t, rep.Complete(), "the dead process's claims are live")
	require.Positive(t, rep.Credit.Sweep.Outcomes[idempotency.OutcomeInFlight])
	require.Equal(t, 28, rep.Deactivate.Done)

	f.clock.Advance(10 * time.Minute)
	rep, err = r.Run(f.ctx, incident)
	require.NoError(t, err)
	t.Logf("run again after the lease:\n%s", rep)
	require.True(t, rep.Complete())
	f.requireRemediated(t, before)
	total := f.calls().since(seeded)
	require.Equal(t, 28, total.deactivate, "the deactivations were all recorded before the kill")

	ran := f.calls()
	rep, err = r.Run(f.ctx, incident)
	require.NoError(t, err)
	require.True(t, rep.Complete())
	require.Equal(t, calls{}, f.calls().since(ran))
}
