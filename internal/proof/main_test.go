package proof

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// TestMain doubles as the worker process: the tests re-execute this binary
// with PROOF_ROLE set, and such a process runs one sweep and exits.
func TestMain(m *testing.M) {
	if os.Getenv("PROOF_ROLE") != "" {
		os.Exit(workerMain())
	}
	pgtest.Main(m)
}

const coupon = "PROOF10"

var promoKeys = idempotency.KeySpace{Namespace: "proof.promo", Version: 1}

// intent is one promotion code owed to one customer.
type intent struct {
	ID       string
	Customer string
}

func intents(n int) []intent {
	out := make([]intent, n)
	for i := range out {
		out[i] = intent{ID: fmt.Sprintf("i%04d", i), Customer: fmt.Sprintf("cus_%04d", i)}
	}
	return out
}

func promoEffect(fakeURL string, httpTimeout time.Duration) *idempotency.Effect[intent, stripeeffect.PromotionCodeResult] {
	cfg := &stripeeffect.APIConfig{URL: fakeURL}
	if httpTimeout > 0 {
		cfg.HTTPClient = newHTTPClient(httpTimeout)
	}
	api := stripeeffect.NewAPI("sk_test_proof", cfg)
	return stripeeffect.PromotionCodeEffect(api, "proof.promo",
		func(in intent) (idempotency.Key, error) { return promoKeys.Key(idempotency.Str("intent", in.ID)) },
		func(in intent) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{Coupon: coupon, Customer: in.Customer}
		})
}

// newFake starts a fake Stripe on loopback with the proof coupon.
func newFake(t *testing.T) *stripefake.Server {
	t.Helper()
	fake := stripefake.New()
	t.Cleanup(fake.Close)
	fake.AddCoupon(coupon, 10)
	return fake
}

// ledgerCounts reads the ledger back: rows per state, and applied rows
// without a result (which must never exist).
func ledgerCounts(t *testing.T, ctx context.Context, pool *pgxpool.Pool) (byState map[string]int, appliedWithoutResult int) {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT state, count(*), count(*) FILTER (WHERE state = 'applied' AND result IS NULL) FROM `+pgguard.DefaultTable+` GROUP BY state`)
	require.NoError(t, err)
	byState = map[string]int{}
	for rows.Next() {
		var s string
		var n, bad int
		require.NoError(t, rows.Scan(&s, &n, &bad))
		byState[s] = n
		appliedWithoutResult += bad
	}
	require.NoError(t, rows.Err())
	return byState, appliedWithoutResult
}

// Worker process settings, passed through the environment.
const (
	envRole        = "PROOF_ROLE"         // "sweep"
	envDSN         = "PROOF_DSN"          // the ledger's database (schema in search_path)
	envStripe      = "PROOF_STRIPE_URL"   // the fake Stripe, over loopback HTTP
	envKeys        = "PROOF_KEYS"         // intents 0..n-1
	envConcurrency = "PROOF_CONCURRENCY"  // sweep concurrency
	envClockOffset = "PROOF_CLOCK_OFFSET" // added to the ledger's clock (a Go duration)
	envCrash       = "PROOF_CRASH"        // where to SIGKILL this process: see crashPoint
	envCrashAt     = "PROOF_CRASH_AT"     // the intent index whose run crashes
	envUncalled    = "PROOF_UNCALLED"     // "1": the effect records call starts (ExpiredRetryUncalled)
	envBatch       = "PROOF_BATCH"        // "1": the sweep claims and completes in batches (see batch_test.go)
	envPark        = "PROOF_PARK"         // "1": the effect parks expired claims (ExpiredPark) and has no Find
)

// Crash points: the step boundaries of one effect.
const (
	crashAfterClaim       = "after-claim"       // claimed, provider not called
	crashAfterResponse    = "after-response"    // provider answered, not recorded
	crashDuringCompletion = "during-completion" // inside the completion transaction
	crashAwaitingResponse = "awaiting-response" // the parent kills us while Stripe holds the response
	crashWaitingForToken  = "waiting-for-token" // the parent kills us while the sweep's rate limiter holds the call
)

func workerMain() int {
	ctx := context.Background()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "proof worker:", err)
		return 2
	}
	n, err := strconv.Atoi(os.Getenv(envKeys))
	if err != nil {
		return fail(err)
	}
	conc, _ := strconv.Atoi(os.Getenv(envConcurrency))
	offset, _ := time.ParseDuration(os.Getenv(envClockOffset))
	pool, err := pgxpool.New(ctx, os.Getenv(envDSN))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	now := func() time.Time { return time.Now().Add(offset) }
	store, err := pgguard.New(pool, &pgguard.Config{Now: now})
	if err != nil {
		return fail(err)
	}
	crash, crashAt := os.Getenv(envCrash), os.Getenv(envCrashAt)
	var mw []idempotency.Middleware
	if crash == crashWaitingForToken {
		// Runs outside the sweep's limiter: says when an attempt is about
		// to wait for a token, so the parent can kill us during the wait.
		mw = append(mw, func(ctx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
			fmt.Println("proof worker: waiting for a token for", a.Key)
			return next(ctx)
		})
	}
	kill := func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	// The tests of this file prove the step boundaries of one run: their
	// sweeps claim run by run. PROOF_BATCH=1 keeps the store's batch
	// capability (batch claims, grouped completions) and its crash points.
	var st idempotency.Store = oneByOne{store}
	if os.Getenv(envBatch) == "1" {
		st = &batchCrasher{Store: store, crash: crash, kill: kill}
	}
	exec, err := idempotency.NewExecutor(st, &idempotency.Config{Now: now, Middleware: mw})
	if err != nil {
		return fail(err)
	}
	eff := promoEffect(os.Getenv(envStripe), 0)
	if os.Getenv(envUncalled) == "1" {
		eff.Expired = idempotency.ExpiredRetryUncalled
	}
	if os.Getenv(envPark) == "1" {
		eff.Expired, eff.DedupWindow, eff.Find = idempotency.ExpiredPark, 0, nil
	}
	cfg := &sweep.Config{Concurrency: max(conc, 1)}
	if crash == crashWaitingForToken {
		// One token, then none for an hour: every run after the first
		// waits, and the parent kills us during that wait.
		cfg.Limiter = rate.NewLimiter(rate.Every(time.Hour), 1)
	}
	if crash != "" && crash != crashWaitingForToken && !batchCrash(crash) {
		call := eff.Call
		eff.Call = func(ctx context.Context, k idempotency.Key, in intent) (stripeeffect.PromotionCodeResult, error) {
			if in.ID != crashAt {
				return call(ctx, k, in)
			}
			switch crash {
			case crashAfterClaim:
				kill()
			case crashAwaitingResponse:
				fmt.Println("proof worker: calling", in.ID) // the parent kills us while the response is held
			}
			out, err := call(ctx, k, in)
			if crash == crashAfterResponse {
				kill()
			}
			return out, err
		}
		eff.OnComplete = func(ctx context.Context, in intent, _ stripeeffect.PromotionCodeResult) error {
			if crash == crashDuringCompletion && in.ID == crashAt {
				kill()
			}
			return nil
		}
	}
	if crash == crashDuringGroupedCompletion {
		// Dies inside the transaction that writes a group of completions.
		eff.OnComplete = func(ctx context.Context, in intent, _ stripeeffect.PromotionCodeResult) error {
			if in.ID == crashAt {
				kill()
			}
			return nil
		}
	}
	rep, err := sweep.Run(ctx, exec, eff, sweep.Slice(intents(n)), cfg)
	fmt.Println("proof worker:", rep.String())
	fmt.Println("proof worker: claim batches", rep.ClaimBatches)
	if err != nil {
		return fail(err)
	}
	if len(rep.Failures) > 0 {
		return fail(fmt.Errorf("%d failures, first: %v", len(rep.Failures), rep.Failures[0]))
	}
	return 0
}

func newHTTPClient(timeout time.Duration) *http.Client { return &http.Client{Timeout: timeout} }

// worker is a child process running one sweep.
type worker struct {
	cmd *exec.Cmd
	out *syncBuffer
}

// syncBuffer is a bytes.Buffer the child writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startWorker re-executes the test binary as a worker process.
func startWorker(t *testing.T, dsn, stripeURL string, keys, concurrency int, offset time.Duration, crash, crashAt string, env ...string) *worker {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		envRole+"=sweep",
		envDSN+"="+dsn,
		envStripe+"="+stripeURL,
		envKeys+"="+strconv.Itoa(keys),
		envConcurrency+"="+strconv.Itoa(concurrency),
		envClockOffset+"="+offset.String(),
		envCrash+"="+crash,
		envCrashAt+"="+crashAt,
		// The modes a test chooses through env, off unless it does (a
		// shell that exported one must not change every worker).
		envBatch+"=", envUncalled+"=", envPark+"=",
	)
	cmd.Env = append(cmd.Env, env...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return &worker{cmd: cmd, out: out}
}

// wait returns the worker's exit: nil for exit 0.
func (w *worker) wait() error { return w.cmd.Wait() }

// killedBySIGKILL reports whether the process died of SIGKILL.
func (w *worker) killedBySIGKILL() bool {
	ws, ok := w.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}
