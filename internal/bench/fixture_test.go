package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/internal/pgcount"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// envSyncCommit, when set, is the synchronous_commit setting of every
// benchmark connection, library and hand-written alike: a diagnostic that
// shows how much of a difference is the WAL flush at commit. Unset (the
// default, and what docs/performance.md reports), the server's setting
// applies.
const envSyncCommit = "BENCH_SYNCHRONOUS_COMMIT"

// grant is one candidate: a loyalty promotion code for a user's milestone.
// The milestone is the per-iteration key part: a benchmark iteration uses
// a milestone no earlier iteration used, so every iteration meets fresh
// keys and does the same work.
type grant struct {
	User      int64
	Milestone int64
	Percent   int64
}

// grants returns n candidates for users 1..n at milestone m.
func grants(n int, m int64) []grant {
	out := make([]grant, n)
	for i := range out {
		out[i] = grant{User: int64(i + 1), Milestone: m, Percent: 10}
	}
	return out
}

// fakeCode is what the fake provider returns: a zero-latency provider
// whose cost is only that of a function call.
const fakeCode = "promo_fake"

// provider is the zero-latency fake provider, shared by both sides of every
// comparison. It counts its calls.
type provider struct {
	calls atomic.Int64
	// latency, when set, is how long each call takes (a real provider's
	// round trip); zero in every benchmark but BenchmarkSweepWithLatency.
	latency time.Duration
}

func (p *provider) create(_ context.Context, key string, _ grant) (string, error) {
	if key == "" {
		return "", errors.New("provider: request without an idempotency key")
	}
	if p.latency > 0 {
		time.Sleep(p.latency)
	}
	p.calls.Add(1)
	return fakeCode, nil
}

var loyaltyKeys = idempotency.KeySpace{Namespace: "bench.loyalty"}

// loyaltyEffect is the effect as a user of the library writes it: key from
// business identity, payload fingerprint, provider call with the key. Its
// provider deduplicates by key for a day, as the hand-written pattern
// assumes (it sends a second tick's call and leans on that), so an expired
// claim is retried under the same key (ExpiredRetry), as the Stripe
// adapters do.
func loyaltyEffect(p *provider) *idempotency.Effect[grant, string] {
	return &idempotency.Effect[grant, string]{
		Name:        "bench.loyalty",
		Expired:     idempotency.ExpiredRetry,
		DedupWindow: 24 * time.Hour,
		Key: func(g grant) (idempotency.Key, error) {
			return loyaltyKeys.Key(idempotency.Int("user", g.User), idempotency.Int("milestone", g.Milestone))
		},
		Fingerprint: func(g grant) ([]byte, error) { return idempotency.FingerprintJSON(g.Percent) },
		Call: func(ctx context.Context, key idempotency.Key, g grant) (string, error) {
			return p.create(ctx, key.String(), g)
		},
	}
}

// fixture is a pool on the test's own schema, with the ledger migrated and
// the domain table created, a statement counter on every connection, and
// the library's store and executor over it.
type fixture struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	count *pgcount.StatementCounter
	store *pgguard.Store
	exec  *idempotency.Executor
	prov  *provider
	eff   *idempotency.Effect[grant, string]
	// sweepCfg, when set, adjusts librarySweep's configuration (tests
	// that count statements stop the flush timer).
	sweepCfg func(*sweep.Config)
}

func newFixture(tb testing.TB, maxConns int) *fixture {
	tb.Helper()
	f := &fixture{ctx: context.Background(), count: &pgcount.StatementCounter{}, prov: &provider{}}
	f.pool = pgtest.PoolWithConfig(tb, func(c *pgxpool.Config) {
		f.count.Configure(c)
		c.MaxConns = int32(max(maxConns, 2))
		// A diagnostic only, applied to both sides of every comparison:
		// the published figures leave the server's setting alone.
		if v := os.Getenv(envSyncCommit); v != "" {
			c.ConnConfig.RuntimeParams["synchronous_commit"] = v
		}
	})
	if err := pgguard.Migrate(f.ctx, f.pool, nil); err != nil {
		tb.Fatalf("migrate: %v", err)
	}
	ddl, err := domainGuard.IndexDDL()
	if err != nil {
		tb.Fatal(err)
	}
	for _, sql := range []string{domainTableDDL, ddl} {
		if _, err := f.pool.Exec(f.ctx, sql); err != nil {
			tb.Fatalf("%s: %v", sql, err)
		}
	}
	if f.store, err = pgguard.New(f.pool, nil); err != nil {
		tb.Fatal(err)
	}
	if f.exec, err = idempotency.NewExecutor(f.store, nil); err != nil {
		tb.Fatal(err)
	}
	f.eff = loyaltyEffect(f.prov)
	return f
}

// warm opens n connections at once, so no measured statement waits for a
// connection to be established.
func (f *fixture) warm(tb testing.TB, n int) {
	tb.Helper()
	var g errgroup.Group
	var mu sync.Mutex
	var conns []*pgxpool.Conn
	for range n {
		g.Go(func() error {
			c, err := f.pool.Acquire(f.ctx)
			if err != nil {
				return err
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			return c.Ping(f.ctx)
		})
	}
	err := g.Wait()
	for _, c := range conns {
		c.Release()
	}
	if err != nil {
		tb.Fatalf("warm pool: %v", err)
	}
}

// The hand-written side's domain table, guarded by a partial unique index
// over its active rows, as in DESIGN.md.
const domainTableDDL = `CREATE TABLE loyalty_discounts (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	user_id    bigint      NOT NULL,
	milestone  bigint      NOT NULL,
	percent    bigint      NOT NULL,
	promo_code text        NOT NULL,
	status     text        NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
)`

var domainGuard = pgguard.Guard{
	Table:          "loyalty_discounts",
	Columns:        []string{"user_id", "milestone"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"applied", "skipped"},
	IndexName:      "uq_loyalty_discounts_active",
}

// seedEvidence is the evidence a run leaves on an applied record (one
// attempt), so that seeded records cost what real ones do to read.
const seedEvidence = `[{"at":"2026-03-14T09:00:00Z","gen":1,"class":"done","status":200,"request_id":"req_seed"}]`

// seedHistory gives both the ledger and the domain table n finished rows
// from an earlier period (milestone 0, another namespace), in two
// set-based statements, and analyzes them, so neither side starts from an
// empty table.
func (f *fixture) seedHistory(tb testing.TB, n int) {
	tb.Helper()
	for _, sql := range []string{
		`INSERT INTO effect_ledger (key, namespace, state, result, token, claims, evidence, first_claimed_at, updated_at)
		SELECT 'bench.history:v1:user#' || g, 'bench.history', 'applied', '"promo_old"'::bytea,
			nextval('effect_ledger_token_seq'), 1, '` + seedEvidence + `', now(), now()
		FROM generate_series(1, $1::bigint) AS g`,
		`INSERT INTO loyalty_discounts (user_id, milestone, percent, promo_code, status)
		SELECT g, 0, 10, 'promo_old', 'applied' FROM generate_series(1, $1::bigint) AS g`,
	} {
		if _, err := f.pool.Exec(f.ctx, sql, int64(n)); err != nil {
			tb.Fatalf("seed history: %v", err)
		}
	}
	f.analyze(tb)
}

func (f *fixture) analyze(tb testing.TB) {
	tb.Helper()
	if _, err := f.pool.Exec(f.ctx, `ANALYZE effect_ledger, loyalty_discounts`); err != nil {
		tb.Fatalf("analyze: %v", err)
	}
}

// seedApplied records gs as applied in the ledger, exactly as a run of the
// effect would have (same key, fingerprint and encoded result), in one
// set-based statement. Keys and fingerprints come from Effect.Identity, so
// the fixture cannot drift from the key encoding.
func (f *fixture) seedApplied(tb testing.TB, gs []grant) {
	tb.Helper()
	if len(gs) == 0 {
		return
	}
	keys := make([]string, len(gs))
	var fp []byte
	for i, g := range gs {
		key, p, err := f.eff.Identity(g)
		if err != nil {
			tb.Fatal(err)
		}
		if i > 0 && string(p) != string(fp) {
			tb.Fatal("seedApplied: candidates with different payloads")
		}
		keys[i], fp = key.String(), p
	}
	result, err := json.Marshal(fakeCode)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := f.pool.Exec(f.ctx, `INSERT INTO effect_ledger
		(key, namespace, state, fingerprint, result, token, claims, evidence, first_claimed_at, updated_at)
		SELECT k, $2::text, 'applied', $3::bytea, $4::bytea, nextval('effect_ledger_token_seq'), 1, '`+seedEvidence+`', now(), now()
		FROM unnest($1::text[]) AS k`,
		keys, loyaltyKeys.Namespace, fp, result); err != nil {
		tb.Fatalf("seed applied: %v", err)
	}
}

// sweepCounts is what one sweep did, whichever way it was written.
type sweepCounts struct {
	Applied, AlreadyApplied int
	ProviderCalls           int
	Lookups                 int
}

func (c sweepCounts) String() string {
	return fmt.Sprintf("applied=%d already_applied=%d provider_calls=%d lookups=%d",
		c.Applied, c.AlreadyApplied, c.ProviderCalls, c.Lookups)
}

// librarySweep runs gs through sweep.Run with the pgguard store: per batch
// of 500 one Lookup, one ClaimMany for the rest, their runs at most conc at
// once, completions written in groups.
func (f *fixture) librarySweep(gs []grant, conc int) (sweepCounts, error) {
	cfg := &sweep.Config{Concurrency: conc}
	if f.sweepCfg != nil {
		f.sweepCfg(cfg)
	}
	rep, err := sweep.Run(f.ctx, f.exec, f.eff, sweep.Slice(gs), cfg)
	if err == nil && len(rep.Failures) > 0 {
		err = fmt.Errorf("%d failures, first: %v", len(rep.Failures), rep.Failures[0])
	}
	return sweepCounts{
		Applied:        rep.Outcomes[idempotency.OutcomeApplied],
		AlreadyApplied: rep.Outcomes[idempotency.OutcomeAlreadyApplied],
		ProviderCalls:  rep.ProviderCalls,
		Lookups:        rep.Lookups,
	}, err
}

// perCandidateSweep is the library with the pre-flight done the naive way:
// one Lookup (one query) per candidate, then idempotency.Run for those not
// already applied, at most conc at once.
func (f *fixture) perCandidateSweep(gs []grant, conc int) (sweepCounts, error) {
	var applied, already, lookups atomic.Int64
	calls := f.prov.calls.Load()
	var g errgroup.Group
	g.SetLimit(conc)
	for _, in := range gs {
		g.Go(func() error {
			key, fp, err := f.eff.Identity(in)
			if err != nil {
				return err
			}
			lookups.Add(1)
			recs, err := f.store.Lookup(f.ctx, []string{key.String()})
			if err != nil {
				return err
			}
			if rec, ok := recs[key.String()]; ok && rec.State.Done() && rec.FingerprintMatches(fp) {
				already.Add(1)
				return nil
			}
			res, err := idempotency.Run(f.ctx, f.exec, f.eff, in)
			if err != nil {
				return err
			}
			switch res.Outcome {
			case idempotency.OutcomeApplied:
				applied.Add(1)
			case idempotency.OutcomeAlreadyApplied:
				already.Add(1)
			default:
				return fmt.Errorf("user %d: outcome %s", in.User, res.Outcome)
			}
			return nil
		})
	}
	err := g.Wait()
	return sweepCounts{
		Applied:        int(applied.Load()),
		AlreadyApplied: int(already.Load()),
		ProviderCalls:  int(f.prov.calls.Load() - calls),
		Lookups:        int(lookups.Load()),
	}, err
}

// runner returns how BenchmarkRun runs candidates for impl: one
// idempotency.Run each through the plain executor ("plain") or one whose
// store is wrapped in idempotency.GroupCommit ("groupcommit"), or the
// hand-written pattern ("handwritten"), at most conc at once.
func (f *fixture) runner(tb testing.TB, impl string) func([]grant, int) (sweepCounts, error) {
	switch impl {
	case "plain":
		return func(gs []grant, conc int) (sweepCounts, error) { return f.libraryRuns(f.exec, gs, conc) }
	case "groupcommit":
		g, err := idempotency.GroupCommit(f.store, &idempotency.GroupCommitConfig{MaxBatch: benchConc, Window: groupWindow})
		if err != nil {
			tb.Fatal(err)
		}
		x, err := idempotency.NewExecutor(g, nil)
		if err != nil {
			tb.Fatal(err)
		}
		return func(gs []grant, conc int) (sweepCounts, error) { return f.libraryRuns(x, gs, conc) }
	case "handwritten":
		return f.handwrittenSweep
	}
	tb.Fatalf("no runner %q", impl)
	return nil
}

// groupWindow is BenchmarkRun's group-commit window.
const groupWindow = 2 * time.Millisecond

// libraryRuns runs gs one idempotency.Run each on x, at most conc at once.
func (f *fixture) libraryRuns(x *idempotency.Executor, gs []grant, conc int) (sweepCounts, error) {
	var applied, already atomic.Int64
	calls := f.prov.calls.Load()
	var g errgroup.Group
	g.SetLimit(conc)
	for _, in := range gs {
		g.Go(func() error {
			res, err := idempotency.Run(f.ctx, x, f.eff, in)
			if err != nil {
				return err
			}
			switch res.Outcome {
			case idempotency.OutcomeApplied:
				applied.Add(1)
			case idempotency.OutcomeAlreadyApplied:
				already.Add(1)
			default:
				return fmt.Errorf("user %d: outcome %s", in.User, res.Outcome)
			}
			return nil
		})
	}
	err := g.Wait()
	return sweepCounts{Applied: int(applied.Load()), AlreadyApplied: int(already.Load()),
		ProviderCalls: int(f.prov.calls.Load() - calls)}, err
}

// seedDomain records gs in the hand-written side's domain table, as its
// pattern would have, in one set-based statement.
func (f *fixture) seedDomain(tb testing.TB, gs []grant) {
	tb.Helper()
	users := make([]int64, len(gs))
	for i, g := range gs {
		users[i] = g.User
	}
	if _, err := f.pool.Exec(f.ctx, `INSERT INTO loyalty_discounts (user_id, milestone, percent, promo_code, status)
		SELECT u, $2::bigint, 10, $3::text, 'applied' FROM unnest($1::bigint[]) AS u`, users, gs[0].Milestone, fakeCode); err != nil {
		tb.Fatalf("seed domain: %v", err)
	}
}

// The hand-written pattern's two statements.
const (
	handPreflightSQL = `SELECT EXISTS (SELECT 1 FROM loyalty_discounts
		WHERE user_id = $1 AND milestone = $2 AND status IN ('applied', 'skipped'))`
	handInsertSQL = `INSERT INTO loyalty_discounts (user_id, milestone, percent, promo_code, status)
		VALUES ($1, $2, $3, $4, 'applied')`
)

// handwrittenOne is one candidate the way teams write it without the
// library: a pre-flight SELECT on the domain table, the provider call with
// a key built by hand, then an INSERT whose unique violation of the
// partial index means "already processed". It reports whether the
// provider was called.
func handwrittenOne(ctx context.Context, pool *pgxpool.Pool, p *provider, g grant) (called bool, err error) {
	var done bool
	if err := pool.QueryRow(ctx, handPreflightSQL, g.User, g.Milestone).Scan(&done); err != nil {
		return false, fmt.Errorf("pre-flight user %d: %w", g.User, err)
	}
	if done {
		return false, nil
	}
	code, err := p.create(ctx, fmt.Sprintf("loyalty-%d-%d", g.User, g.Milestone), g)
	if err != nil {
		return true, err
	}
	_, err = pool.Exec(ctx, handInsertSQL, g.User, g.Milestone, g.Percent, code)
	if err != nil && !pgguard.IsUniqueViolation(err, domainGuard.IndexName) {
		return true, fmt.Errorf("insert user %d: %w", g.User, err)
	}
	return true, nil
}

// handwrittenSweep runs handwrittenOne over gs, at most conc at once.
func (f *fixture) handwrittenSweep(gs []grant, conc int) (sweepCounts, error) {
	var called, skipped atomic.Int64
	calls := f.prov.calls.Load()
	var g errgroup.Group
	g.SetLimit(conc)
	for _, in := range gs {
		g.Go(func() error {
			c, err := handwrittenOne(f.ctx, f.pool, f.prov, in)
			if c {
				called.Add(1)
			} else if err == nil {
				skipped.Add(1)
			}
			return err
		})
	}
	err := g.Wait()
	return sweepCounts{
		Applied:        int(called.Load()),
		AlreadyApplied: int(skipped.Load()),
		ProviderCalls:  int(f.prov.calls.Load() - calls),
		Lookups:        len(gs),
	}, err
}
