package applyloyalty

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const coupon = "anniv10"

// asOf is the tick's business date. Ticks select candidates with it; keys
// never see it.
var asOf = time.Date(2026, 5, 31, 23, 45, 0, 0, time.UTC)

type fixture struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	fake  *stripefake.Server
	clock *clocktest.Clock
	p     *Program
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, Migrate(ctx, pool))
	fake := stripefake.New()
	t.Cleanup(fake.Close)
	fake.AddCoupon(coupon, 10)
	clock := clocktest.New()
	p, err := New(Config{DB: pool, Stripe: stripeeffect.NewAPI("sk_test_loyalty", &stripeeffect.APIConfig{URL: fake.URL()}), Coupon: coupon, Now: clock.Now})
	require.NoError(t, err)
	return &fixture{ctx: ctx, pool: pool, fake: fake, clock: clock, p: p}
}

// subscribe adds a subscription that started monthsAgo months before at.
func (f *fixture) subscribe(t *testing.T, user, sub, plan string, at time.Time, monthsAgo int) {
	t.Helper()
	_, err := f.pool.Exec(f.ctx, `INSERT INTO subscriptions (id, user_id, customer_id, plan, started_at) VALUES ($1, $2, $3, $4, $5)`,
		sub, user, "cus_"+user, plan, at.AddDate(0, -monthsAgo, 0))
	require.NoError(t, err)
}

func (f *fixture) subscribers(t *testing.T, n int) []string {
	t.Helper()
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("u%03d", i)
		f.subscribe(t, users[i], "sub_"+users[i], "pro", asOf, 13)
	}
	f.subscribe(t, "u_basic", "sub_basic", "basic", asOf, 13) // not Pro
	f.subscribe(t, "u_new", "sub_new", "pro", asOf, 11)       // not yet 12 months
	return users
}

func (f *fixture) activeDiscounts(t *testing.T) map[string]int {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT user_id, count(*) FROM loyalty_discounts WHERE status = 'applied' GROUP BY user_id`)
	require.NoError(t, err)
	out := map[string]int{}
	for rows.Next() {
		var u string
		var n int
		require.NoError(t, rows.Scan(&u, &n))
		out[u] = n
	}
	require.NoError(t, rows.Err())
	return out
}

func TestTwoOverlappingTicksGiveOneCodePerSubscriber(t *testing.T) {
	t.Parallel()
	f := setup(t)
	users := f.subscribers(t, 30)

	// Two ticks 30 minutes apart that overlap, across a month boundary (the
	// incident's clock-bucket key flipped exactly here).
	var wg sync.WaitGroup
	reports := make([]sweep.Report, 2)
	for i, at := range []time.Time{asOf, asOf.Add(30 * time.Minute)} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := f.p.Tick(f.ctx, at)
			require.NoError(t, err)
			reports[i] = rep
		}()
	}
	wg.Wait()

	require.Equal(t, len(users), f.fake.Created(stripefake.KindPromotionCode), "Stripe promotion codes created")
	require.Equal(t, len(users), reports[0].ProviderCalls+reports[1].ProviderCalls, "the claim stops the second tick before it calls Stripe")
	got := f.activeDiscounts(t)
	require.Len(t, got, len(users))
	for _, u := range users {
		require.Equal(t, 1, got[u], "user %s", u)
	}
	require.Zero(t, f.fake.RequestsWithoutKey())
}

func TestCrashAfterStripeCreatedTheCodeGivesOneCodeAfterTheNextTick(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.subscribers(t, 5)
	var crashed atomic.Bool
	f.p.beforeRecord = func(c Candidate) error {
		if c.UserID == "u002" && crashed.CompareAndSwap(false, true) {
			return errors.New("worker killed after Stripe answered")
		}
		return nil
	}
	rep, err := f.p.Tick(f.ctx, asOf)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeError])
	require.Equal(t, 5, f.fake.Created(stripefake.KindPromotionCode))
	require.NotContains(t, f.activeDiscounts(t), "u002", "the crash lost the row")

	// The next tick, while the dead worker's lease is live: no call.
	rep, err = f.p.Tick(f.ctx, asOf.Add(30*time.Minute))
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeInFlight])
	require.Zero(t, rep.ProviderCalls)

	// After the lease: taken over under the same key, Stripe replays.
	f.clock.Advance(time.Hour)
	rep, err = f.p.Tick(f.ctx, asOf.Add(90*time.Minute))
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 5, f.fake.Created(stripefake.KindPromotionCode), "one code for u002, not two")
	require.Equal(t, 1, f.activeDiscounts(t)["u002"])

	var promoID string
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT promotion_code_id FROM loyalty_discounts WHERE user_id = 'u002'`).Scan(&promoID))
	key, _ := Key(Candidate{UserID: "u002", SubscriptionID: "sub_u002", Milestone: MilestoneMonths})
	reqs := f.fake.Requests(key.String())
	require.Len(t, reqs, 2, "the crashed call and the takeover's replay")
	require.True(t, reqs[1].Replayed)
	require.Equal(t, reqs[0].ObjectID, promoID)
}

func TestRevokedCodeAndNewSubscriptionEarnASecondCode(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.subscribe(t, "alice", "sub_1", "pro", asOf, 13)
	_, err := f.p.Tick(f.ctx, asOf)
	require.NoError(t, err)
	require.Equal(t, 1, f.fake.Created(stripefake.KindPromotionCode))

	// Alice cancels: the code is revoked at Stripe and in both tables.
	require.NoError(t, f.p.Revoke(f.ctx, "alice", "subscription cancelled"))
	_, err = f.pool.Exec(f.ctx, `UPDATE subscriptions SET cancelled_at = $1 WHERE id = 'sub_1'`, asOf)
	require.NoError(t, err)

	// A tick before she resubscribes gives nothing.
	rep, err := f.p.Tick(f.ctx, asOf.AddDate(0, 1, 0))
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)

	// She resubscribes and completes 12 months again: a new, legitimate code.
	later := asOf.AddDate(1, 2, 0)
	f.subscribe(t, "alice", "sub_2", "pro", later, 12)
	rep, err = f.p.Tick(f.ctx, later)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 2, f.fake.Created(stripefake.KindPromotionCode))

	var revoked, applied int
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FILTER (WHERE status = 'revoked'), count(*) FILTER (WHERE status = 'applied')
		FROM loyalty_discounts WHERE user_id = 'alice'`).Scan(&revoked, &applied))
	require.Equal(t, 1, revoked)
	require.Equal(t, 1, applied)
}

func TestAlreadyRewardedUserCostsNoStripeCall(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.subscribers(t, 10)
	_, err := f.p.Tick(f.ctx, asOf)
	require.NoError(t, err)
	before := f.fake.RequestCount()

	rep, err := f.p.Tick(f.ctx, asOf.Add(30*time.Minute))
	require.NoError(t, err)
	require.Zero(t, rep.Candidates, "the candidate query skips rewarded users")

	// Even fed the same candidates directly (a buggy query), the ledger's
	// batch pre-flight stops them before Stripe.
	var cands []Candidate
	for i := range 10 {
		u := fmt.Sprintf("u%03d", i)
		cands = append(cands, Candidate{UserID: u, SubscriptionID: "sub_" + u, CustomerID: "cus_" + u, Milestone: MilestoneMonths})
	}
	rep, err = sweep.Run(f.ctx, f.p.Executor(), f.p.Effect(), sweep.Slice(cands), nil)
	require.NoError(t, err)
	require.Equal(t, 10, rep.SavedByPreflight)
	require.Zero(t, rep.ProviderCalls)
	require.Equal(t, before, f.fake.RequestCount(), "no request reached Stripe")
}

// A row the old clock-keyed job wrote has no ledger record: revoking it
// revokes the row (and deactivates its code), and does not fail on the
// missing record.
func TestRevokeARowWrittenBeforeTheLedger(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.subscribe(t, "bob", "sub_bob", "pro", asOf, 13)
	pc, err := f.p.api.PromotionCodes.New(&stripe.PromotionCodeParams{Coupon: stripe.String(coupon), Customer: stripe.String("cus_bob")})
	require.NoError(t, err)
	_, err = f.pool.Exec(f.ctx, `INSERT INTO loyalty_discounts (user_id, subscription_id, milestone, promotion_code_id, code, status, idempotency_key)
		VALUES ('bob', 'sub_bob', 12, $1, $2, 'applied', 'anniv-bob-20345')`, pc.ID, pc.Code)
	require.NoError(t, err)

	require.NoError(t, f.p.Revoke(f.ctx, "bob", "subscription cancelled"))
	var status string
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT status FROM loyalty_discounts WHERE user_id = 'bob'`).Scan(&status))
	require.Equal(t, "revoked", status)
	got, err := f.p.api.PromotionCodes.Get(pc.ID, nil)
	require.NoError(t, err)
	require.False(t, got.Active)
}
