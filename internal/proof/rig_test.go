package proof

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The in-process tests: an executor over pgguard's store on a real
// PostgreSQL schema, a fake Stripe over loopback HTTP, the real stripe-go
// client in between, and a fake clock for the ledger so that leases and
// windows expire without sleeping.

// promoResult is what the proof effect returns.
type promoResult = stripeeffect.PromotionCodeResult

const promoPath = "/v1/promotion_codes"

// newFakeClock is the ledger's and the executor's clock
// (pgguard.Config.Now, idempotency.Config.Now).
func newFakeClock() *clocktest.Clock {
	c := clocktest.New()
	c.Set(time.Date(2025, time.March, 1, 12, 0, 0, 0, time.UTC))
	return c
}

// rig is one test's world: a schema with the ledger, a store and an
// executor on a fake clock, and a fake Stripe.
type rig struct {
	t     *testing.T
	ctx   context.Context
	dsn   string // the schema's DSN, for more pools on the same ledger
	pool  *pgxpool.Pool
	store *pgguard.Store
	clock *clocktest.Clock
	fake  *stripefake.Server
	exec  *idempotency.Executor
}

// newRig builds a rig. configure, if not nil, changes the worker pool's
// configuration (application_name, MaxConns, ...).
func newRig(t *testing.T, configure func(*pgxpool.Config)) *rig {
	t.Helper()
	r := &rig{t: t, ctx: context.Background(), dsn: pgtest.ConnString(t), clock: newFakeClock(), fake: newFake(t)}
	r.pool = poolWith(t, r.dsn, configure)
	require.NoError(t, pgguard.Migrate(r.ctx, r.pool, nil))
	var err error
	r.store, err = pgguard.New(r.pool, &pgguard.Config{Now: r.clock.Now})
	require.NoError(t, err)
	r.exec, err = idempotency.NewExecutor(r.store, &idempotency.Config{Now: r.clock.Now})
	require.NoError(t, err)
	return r
}

// poolWith opens a pool on dsn, closed when the test ends.
func poolWith(t *testing.T, dsn string, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	require.NoError(t, err)
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// effect is the proof effect (stripeeffect.PromotionCodeEffect: ExpiredRetry,
// DedupWindow 24h) with the given in-run retry policy; httpTimeout > 0 gives
// its stripe-go client an HTTP client with that timeout.
func (r *rig) effect(retry idempotency.RetryPolicy, httpTimeout time.Duration) *idempotency.Effect[intent, promoResult] {
	e := promoEffect(r.fake.URL(), httpTimeout)
	e.Retry = &retry
	return e
}

// attempts returns a retry policy of n attempts per run with a short
// backoff, so in-run retries cost milliseconds (a Retry-After still wins).
func attempts(n int) idempotency.RetryPolicy {
	return idempotency.RetryPolicy{MaxAttempts: n, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 5 * time.Second}
}

func (r *rig) run(e *idempotency.Effect[intent, promoResult], in intent) (idempotency.Result[promoResult], error) {
	return idempotency.Run(r.ctx, r.exec, e, in)
}

// ledgerRow is one row of the ledger, read back with SQL.
type ledgerRow struct {
	State  string
	Token  int64
	Claims int
	Leased bool // lease_until is set
	Result []byte
	Reason string
}

// rows returns every ledger row of key (active or not), oldest first.
func (r *rig) rows(key string) []ledgerRow {
	r.t.Helper()
	return ledgerRowsOf(r.t, r.ctx, r.pool, key)
}

func ledgerRowsOf(t *testing.T, ctx context.Context, pool *pgxpool.Pool, key string) []ledgerRow {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT state, token, claims, lease_until IS NOT NULL, result, coalesce(reason, '')
		FROM `+pgguard.DefaultTable+` WHERE key = $1 ORDER BY id`, key)
	require.NoError(t, err)
	defer rows.Close()
	var out []ledgerRow
	for rows.Next() {
		var lr ledgerRow
		require.NoError(t, rows.Scan(&lr.State, &lr.Token, &lr.Claims, &lr.Leased, &lr.Result, &lr.Reason))
		out = append(out, lr)
	}
	require.NoError(t, rows.Err())
	return out
}

// row returns the only ledger row of key.
func (r *rig) row(key string) ledgerRow {
	r.t.Helper()
	rows := r.rows(key)
	require.Len(r.t, rows, 1, "ledger rows for %s", key)
	return rows[0]
}

// tableRows counts every row of the ledger.
func (r *rig) tableRows() int {
	r.t.Helper()
	var n int
	require.NoError(r.t, r.pool.QueryRow(r.ctx, `SELECT count(*) FROM `+pgguard.DefaultTable).Scan(&n))
	return n
}

// requireApplied checks that key's only row is applied and holds the
// result of the one object Stripe created for it.
func (r *rig) requireApplied(key string) ledgerRow {
	r.t.Helper()
	lr := r.row(key)
	require.Equal(r.t, "applied", lr.State)
	require.False(r.t, lr.Leased)
	var res promoResult
	require.NoError(r.t, json.Unmarshal(lr.Result, &res), "stored result %q", lr.Result)
	require.Equal(r.t, objectOf(r.t, r.fake, key).ID, res.ID, "the ledger holds the object Stripe created")
	return lr
}

// objectOf returns the only object Stripe created under key.
func objectOf(t *testing.T, fake *stripefake.Server, key string) stripefake.Object {
	t.Helper()
	var found []stripefake.Object
	for _, o := range fake.Objects() {
		if o.IdempotencyKey == key {
			found = append(found, o)
		}
	}
	require.Len(t, found, 1, "objects created under %s", key)
	return found[0]
}

// requireOnePerKey is the provider-side check every test makes: Stripe
// created exactly one promotion code per key and nothing else; every POST to
// /v1/promotion_codes carried one of keys (so the number of POSTs equals the
// requests counted per key), none went out without a key or with a key
// stripe-go invented, and exactly one request per key executed. It returns
// the number of POSTs.
func requireOnePerKey(t *testing.T, fake *stripefake.Server, keys ...string) int {
	t.Helper()
	require.Equal(t, len(keys), fake.Created(stripefake.KindPromotionCode), "promotion codes Stripe created")
	require.Equal(t, len(keys), fake.CreatedObjects(), "objects of any kind Stripe created")
	require.Zero(t, fake.RequestsWithoutKey(), "POSTs without an Idempotency-Key")
	require.Zero(t, fake.RequestsWithGeneratedKey(), "POSTs with a key stripe-go invented")
	posts := 0
	for _, rec := range fake.AllRequests() {
		if rec.Method == http.MethodPost && rec.Path == promoPath {
			posts++
		}
	}
	perKey := 0
	for _, k := range keys {
		reqs := fake.Requests(k)
		executed := 0
		for _, rec := range reqs {
			require.Equal(t, k, rec.IdempotencyKey)
			require.Equal(t, promoPath, rec.Path)
			if rec.Executed {
				executed++
			}
		}
		require.Equal(t, 1, executed, "requests that executed under %s: %+v", k, reqs)
		objectOf(t, fake, k)
		perKey += len(reqs)
	}
	require.Equal(t, posts, perKey, "every POST carried the key of its intent")
	return posts
}

// requestSummary describes key's requests compactly, for assertions and logs:
// "200 executed", "409 idempotency_key_in_use", "200 replayed", ...
func requestSummary(fake *stripefake.Server, key string) []string {
	var out []string
	for _, rec := range fake.Requests(key) {
		s := strconv.Itoa(rec.Status)
		if rec.Status == 0 {
			s = "no response"
		}
		switch {
		case rec.Executed:
			s += " executed"
		case rec.Replayed:
			s += " replayed"
		case rec.ErrorCode != "":
			s += " " + rec.ErrorCode
		}
		out = append(out, s)
	}
	return out
}

func listByCustomer(customer string) *stripe.PromotionCodeListParams {
	return &stripe.PromotionCodeListParams{Customer: stripe.String(customer)}
}

// requirePgCode checks that err carries a PostgreSQL error with code.
func requirePgCode(t *testing.T, err error, code string) {
	t.Helper()
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe), "want SQLSTATE %s, got %v", code, err)
	require.Equal(t, code, pe.Code, "%v", err)
}

// stuckKeys lists the keys Operator.ListStuck reports.
func (r *rig) stuckKeys() []string {
	r.t.Helper()
	recs, err := r.store.ListStuck(r.ctx, idempotency.ListStuckRequest{Namespace: promoKeys.Namespace})
	require.NoError(r.t, err)
	var out []string
	for _, rec := range recs {
		out = append(out, rec.Key)
	}
	slices.Sort(out)
	return out
}

// settleFromStripe is the operator's reconciliation of a stuck record: find
// the record with ListStuck, look the object up at Stripe by the customer
// and the idempotency key the adapter put in its metadata, and settle the
// record as applied with that object. It returns the object's id.
func (r *rig) settleFromStripe(key, customer string) string {
	r.t.Helper()
	recs, err := r.store.ListStuck(r.ctx, idempotency.ListStuckRequest{Namespace: promoKeys.Namespace})
	require.NoError(r.t, err)
	i := slices.IndexFunc(recs, func(rec idempotency.Record) bool { return rec.Key == key })
	require.GreaterOrEqual(r.t, i, 0, "ListStuck must list %s", key)
	stuck := recs[i]

	api := stripeeffect.NewAPI("sk_test_proof", &stripeeffect.APIConfig{URL: r.fake.URL()})
	var found []promoResult
	it := api.PromotionCodes.List(listByCustomer(customer))
	for it.Next() {
		pc := it.PromotionCode()
		if pc.Metadata[stripeeffect.MetadataKey] == key {
			found = append(found, stripeeffect.PromotionCodeResultOf(pc))
		}
	}
	require.NoError(r.t, it.Err())
	require.Len(r.t, found, 1, "the operator finds exactly one code at Stripe for %s", key)
	enc, err := json.Marshal(found[0])
	require.NoError(r.t, err)

	// A stale token (a worker's, or an older listing's) changes nothing.
	_, err = r.store.Settle(r.ctx, idempotency.SettleRequest{Key: key, Token: stuck.Token + 1_000_000,
		State: idempotency.StateApplied, Result: enc, Reason: "stale"})
	require.ErrorIs(r.t, err, idempotency.ErrClaimLost)

	rec, err := r.store.Settle(r.ctx, idempotency.SettleRequest{Key: key, Token: stuck.Token,
		State: idempotency.StateApplied, Result: enc, Reason: "operator: found at Stripe by metadata"})
	require.NoError(r.t, err)
	require.Equal(r.t, idempotency.StateApplied, rec.State)
	return found[0].ID
}
