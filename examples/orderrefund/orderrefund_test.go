package orderrefund

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type fixture struct {
	ctx  context.Context
	pool *pgxpool.Pool
	fake *stripefake.Server
	p    *Program
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, Migrate(ctx, pool))
	fake := stripefake.New()
	t.Cleanup(fake.Close)
	p, err := New(Config{
		DB:     pool,
		Stripe: stripeeffect.NewAPI("sk_test_orderrefund", &stripeeffect.APIConfig{URL: fake.URL()}),
		Now:    clocktest.New().Now,
	})
	require.NoError(t, err)
	return &fixture{ctx: ctx, pool: pool, fake: fake, p: p}
}

// order adds an order paid with payment intent "pi_<id>", known to the fake.
func (f *fixture) order(t *testing.T, id string, paid int64) {
	t.Helper()
	_, err := f.pool.Exec(f.ctx, `INSERT INTO orders (id, payment_intent_id, amount_paid_cents, currency) VALUES ($1, $2, $3, 'usd')`,
		id, "pi_"+id, paid)
	require.NoError(t, err)
	f.fake.AddPaymentIntent("pi_"+id, paid, "usd")
}

func (f *fixture) request(t *testing.T, id, order string, amount int64) {
	t.Helper()
	_, err := f.pool.Exec(f.ctx, `INSERT INTO refund_requests (id, order_id, amount_cents) VALUES ($1, $2, $3)`, id, order, amount)
	require.NoError(t, err)
}

// key is the idempotency key of a request, as sent to Stripe.
func key(order, request string) string {
	k, err := Key(Request{OrderID: order, RequestID: request})
	if err != nil {
		panic(err)
	}
	return k.String()
}

type refundRow struct {
	Status, StripeID, FailureReason string
	Amount                          int64
}

// refunds returns the refunds rows of a request, oldest first.
func (f *fixture) refunds(t *testing.T, request string) []refundRow {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT status, coalesce(stripe_refund_id, ''), coalesce(failure_reason, ''), amount_cents
		FROM refunds WHERE refund_request_id = $1 ORDER BY id`, request)
	require.NoError(t, err)
	var out []refundRow
	for rows.Next() {
		var r refundRow
		require.NoError(t, rows.Scan(&r.Status, &r.StripeID, &r.FailureReason, &r.Amount))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

func TestRedeliveredRequestIssuesOneRefund(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.order(t, "ord_1", 5000)
	f.request(t, "rr_1", "ord_1", 2000)

	// The queue delivers the request 8 times at once.
	results := make([]idempotency.Result[stripeeffect.RefundResult], 8)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = f.p.Refund(f.ctx, "rr_1")
		}()
	}
	wg.Wait()
	calls := 0
	for i := range results {
		require.NoError(t, errs[i])
		calls += results[i].Calls
	}
	require.Equal(t, 1, calls, "the claim stops 7 of 8 deliveries before Stripe")

	// And once more, later.
	res, err := f.p.Refund(f.ctx, "rr_1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Zero(t, res.Calls)

	require.Equal(t, 1, f.fake.Created(stripefake.KindRefund))
	require.Equal(t, int64(2000), f.fake.Refunded("pi_ord_1"))
	require.Len(t, f.fake.Requests(key("ord_1", "rr_1")), 1, "one request reached Stripe")
	stripeID := f.fake.Objects()[0].ID
	require.Equal(t, stripeID, res.Value.ID)
	require.Equal(t, []refundRow{{Status: "succeeded", StripeID: stripeID, Amount: 2000}}, f.refunds(t, "rr_1"))
}

func TestSameRequestWithAnotherAmountIsAMismatch(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.order(t, "ord_1", 5000)
	f.request(t, "rr_1", "ord_1", 3000)
	_, err := f.p.Refund(f.ctx, "rr_1")
	require.NoError(t, err)

	// Someone edits the request after its refund, and the queue redelivers it.
	_, err = f.pool.Exec(f.ctx, `UPDATE refund_requests SET amount_cents = 2500 WHERE id = 'rr_1'`)
	require.NoError(t, err)
	res, err := f.p.Refund(f.ctx, "rr_1")
	var mismatch *idempotency.MismatchError
	require.ErrorAs(t, err, &mismatch)
	require.Equal(t, idempotency.OutcomeMismatch, res.Outcome)
	require.Zero(t, res.Calls)
	require.Equal(t, idempotency.StateApplied, mismatch.Stored.State)

	require.Len(t, f.fake.Requests(key("ord_1", "rr_1")), 1, "the edited amount never reached Stripe")
	require.Equal(t, 1, f.fake.Created(stripefake.KindRefund))
	require.Equal(t, int64(3000), f.fake.Refunded("pi_ord_1"))
	rows := f.refunds(t, "rr_1")
	require.Len(t, rows, 1)
	require.Equal(t, "succeeded", rows[0].Status)
	require.Equal(t, int64(3000), rows[0].Amount)
}

func TestTwoRequestsOnOneOrderGiveTwoRefunds(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.order(t, "ord_1", 10000)
	f.request(t, "rr_a", "ord_1", 3000)
	f.request(t, "rr_b", "ord_1", 2000)

	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 2, f.fake.Created(stripefake.KindRefund))
	require.Equal(t, int64(5000), f.fake.Refunded("pi_ord_1"))
	a, b := f.refunds(t, "rr_a"), f.refunds(t, "rr_b")
	require.Len(t, a, 1)
	require.Len(t, b, 1)
	require.Equal(t, "succeeded", a[0].Status)
	require.Equal(t, "succeeded", b[0].Status)
	require.Equal(t, []int64{3000, 2000}, []int64{a[0].Amount, b[0].Amount})
	require.NotEqual(t, a[0].StripeID, b[0].StripeID)

	// The next tick has nothing to do and asks Stripe nothing.
	before := f.fake.RequestCount()
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)
	require.Equal(t, before, f.fake.RequestCount())
}

func TestRefundOverThePaidAmountIsRefusedBeforeStripe(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.order(t, "ord_1", 10000)
	f.request(t, "rr_1", "ord_1", 7000)
	f.request(t, "rr_2", "ord_1", 4000) // 7000 + 4000 > 10000
	f.request(t, "rr_3", "ord_1", 3000) // 7000 + 3000 = 10000: fits exactly

	_, err := f.p.Refund(f.ctx, "rr_1")
	require.NoError(t, err)
	res, err := f.p.Refund(f.ctx, "rr_2")
	require.ErrorIs(t, err, ErrExceedsPaid)
	require.ErrorIs(t, err, idempotency.ErrPermanent)
	require.Equal(t, idempotency.OutcomePermanent, res.Outcome)
	require.Empty(t, f.fake.Requests(key("ord_1", "rr_2")), "no request reached Stripe")
	rows := f.refunds(t, "rr_2")
	require.Len(t, rows, 1)
	require.Equal(t, "failed", rows[0].Status)
	require.Empty(t, rows[0].StripeID)
	require.Contains(t, rows[0].FailureReason, "has 3000 of 10000 usd left")

	res, err = f.p.Refund(f.ctx, "rr_3")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, 2, f.fake.Created(stripefake.KindRefund))
	require.Equal(t, int64(10000), f.fake.Refunded("pi_ord_1"))

	// The failed row keeps rr_2 out of the tick.
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)
}

func TestConcurrentRequestsOverThePaidAmountGiveOneRefund(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.order(t, "ord_1", 10000)
	f.request(t, "rr_a", "ord_1", 6000)
	f.request(t, "rr_b", "ord_1", 6000) // each fits alone, not both

	// Hold the order's row lock so that both requests reach their
	// reservation before either commits: the worst interleaving, every time.
	tx, err := f.pool.Begin(f.ctx)
	require.NoError(t, err)
	_, err = tx.Exec(f.ctx, `SELECT FROM orders WHERE id = 'ord_1' FOR NO KEY UPDATE`)
	require.NoError(t, err)
	ids := []string{"rr_a", "rr_b"}
	results := make([]idempotency.Result[stripeeffect.RefundResult], 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	defer func() { // also when waitForLockWaiters gives up
		_ = tx.Rollback(f.ctx)
		wg.Wait()
	}()
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = f.p.Refund(f.ctx, id)
		}()
	}
	waitForLockWaiters(t, f, 2)
	require.NoError(t, tx.Rollback(f.ctx))
	wg.Wait()

	won, lost := 0, 1
	if errs[0] != nil {
		won, lost = 1, 0
	}
	require.NoError(t, errs[won])
	require.Equal(t, idempotency.OutcomeApplied, results[won].Outcome)
	require.ErrorIs(t, errs[lost], ErrExceedsPaid)
	require.Equal(t, idempotency.OutcomePermanent, results[lost].Outcome)

	require.Equal(t, 1, f.fake.Created(stripefake.KindRefund))
	require.Equal(t, int64(6000), f.fake.Refunded("pi_ord_1"))
	require.Len(t, f.fake.AllRequests(), 1, "the refused request never reached Stripe (no amount_too_large)")
	require.Equal(t, "succeeded", f.refunds(t, ids[won])[0].Status)
	lostRows := f.refunds(t, ids[lost])
	require.Len(t, lostRows, 1)
	require.Equal(t, "failed", lostRows[0].Status)
}

// waitForLockWaiters waits until n of the test's connections wait for a
// lock. Without the order row lock in reserve they never do, and the test
// fails here. The limit only ends that failing case: it is generous so
// that a loaded machine, slow to get the runs to the lock, never hits it.
func waitForLockWaiters(t *testing.T, f *fixture, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var waiting int
		require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = current_setting('application_name') AND wait_event_type = 'Lock'`).Scan(&waiting))
		if waiting == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections wait for the order's row lock after 30s, want %d: reservations must lock the order", waiting, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStripeRefusalFreesTheReservation(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.order(t, "ord_1", 10000)
	f.request(t, "rr_1", "ord_1", 5000)
	f.request(t, "rr_2", "ord_1", 2000)

	// Support refunded 8000 in the Stripe dashboard: Stripe knows, our
	// database does not.
	params := &stripe.RefundParams{PaymentIntent: stripe.String("pi_ord_1"), Amount: stripe.Int64(8000)}
	params.SetIdempotencyKey("dashboard-1")
	_, err := f.fake.Client("sk_test_dashboard").Refunds.New(params)
	require.NoError(t, err)

	res, err := f.p.Refund(f.ctx, "rr_1")
	require.ErrorIs(t, err, idempotency.ErrPermanent)
	require.NotErrorIs(t, err, ErrExceedsPaid, "our database saw room: Stripe refused")
	require.Equal(t, idempotency.OutcomePermanent, res.Outcome)
	reqs := f.fake.Requests(key("ord_1", "rr_1"))
	require.Len(t, reqs, 1)
	require.Equal(t, "amount_too_large", reqs[0].ErrorCode)
	rows := f.refunds(t, "rr_1")
	require.Len(t, rows, 1)
	require.Equal(t, "failed", rows[0].Status, "the reservation is freed")
	require.Contains(t, rows[0].FailureReason, "amount_too_large")

	// rr_1's 5000 is no longer held: rr_2 fits, at Stripe too.
	res, err = f.p.Refund(f.ctx, "rr_2")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, int64(10000), f.fake.Refunded("pi_ord_1"))
	require.Equal(t, 2, f.fake.Created(stripefake.KindRefund), "the dashboard's and rr_2's")
}

func TestLostResponseIsRecordedByTheNextRun(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.order(t, "ord_1", 10000)
	f.request(t, "rr_1", "ord_1", 2500)
	// One attempt per run, so the lost response ends this run (by default
	// the executor would retry in-run, and Stripe would replay at once).
	f.p.effect.Retry = &idempotency.RetryPolicy{MaxAttempts: 1}

	// Stripe makes the refund; its answer never arrives.
	f.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/refunds"})
	res, err := f.p.Refund(f.ctx, "rr_1")
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
	require.Equal(t, 1, f.fake.Created(stripefake.KindRefund))
	require.Equal(t, int64(2500), f.fake.Refunded("pi_ord_1"))
	require.Equal(t, []refundRow{{Status: "reserved", Amount: 2500}}, f.refunds(t, "rr_1"), "outcome unknown: the amount stays held")

	// The next run, here the tick: same key, Stripe replays.
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 1, f.fake.Created(stripefake.KindRefund), "exactly one refund at Stripe")
	require.Equal(t, int64(2500), f.fake.Refunded("pi_ord_1"))

	reqs := f.fake.Requests(key("ord_1", "rr_1"))
	require.Len(t, reqs, 2)
	require.Equal(t, stripefake.FaultResponseLost, reqs[0].Fault)
	require.True(t, reqs[0].Executed)
	require.True(t, reqs[1].Replayed)
	require.Equal(t, []refundRow{{Status: "succeeded", StripeID: reqs[0].ObjectID, Amount: 2500}}, f.refunds(t, "rr_1"))

	res, err = f.p.Refund(f.ctx, "rr_1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Equal(t, reqs[0].ObjectID, res.Value.ID)
	require.True(t, res.Value.Replayed, "the ledger keeps that the refund was made by the lost request")
}

func TestAnotherKeyForAReservedRequestNeverReachesStripe(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.order(t, "ord_1", 10000)
	f.request(t, "rr_1", "ord_1", 2500)
	f.p.effect.Retry = &idempotency.RetryPolicy{MaxAttempts: 1}
	f.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/refunds"})
	_, err := f.p.Refund(f.ctx, "rr_1")
	require.ErrorIs(t, err, idempotency.ErrRetryable) // refunded at Stripe, reserved here

	// A deploy changed the key (the incident's clock bucket, a version
	// bump): the ledger sees a new intent, Stripe would too. The
	// reservation, made under the old key, stops it.
	other := *f.p.Effect()
	other.Key = func(r Request) (idempotency.Key, error) {
		return idempotency.KeySpace{Namespace: Keys.Namespace, Version: 2}.Key(idempotency.Str("request", r.RequestID))
	}
	r := Request{RequestID: "rr_1", OrderID: "ord_1", PaymentIntent: "pi_ord_1", AmountCents: 2500, Currency: "usd", Reason: "requested_by_customer"}
	res, err := idempotency.Run(f.ctx, f.p.Executor(), &other, r)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation, "the reservation says a refund may exist")
	require.Equal(t, idempotency.StateInDoubt, res.Record.State, "in doubt: a later run asks Stripe, an operator settles")
	require.Empty(t, f.fake.Requests(res.Key.String()), "no request under the new key")
	require.Equal(t, 1, f.fake.Created(stripefake.KindRefund))
	require.Equal(t, int64(2500), f.fake.Refunded("pi_ord_1"))
	require.Equal(t, []refundRow{{Status: "reserved", Amount: 2500}}, f.refunds(t, "rr_1"))
}

func TestOverlappingTicksGiveOneRefundPerRequest(t *testing.T) {
	t.Parallel()
	f := setup(t)
	const orders = 20
	for i := range orders {
		o := fmt.Sprintf("ord_%02d", i)
		f.order(t, o, 10000)
		f.request(t, o+"_a", o, 4000)
		f.request(t, o+"_b", o, 6000) // the two together refund the order in full
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	var calls int
	var errs []error
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := f.p.Tick(f.ctx)
			mu.Lock()
			defer mu.Unlock()
			calls += rep.ProviderCalls
			errs = append(errs, err)
			for _, fl := range rep.Failures {
				errs = append(errs, errors.New(fl.String()))
			}
		}()
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))

	require.Equal(t, 2*orders, calls, "the claim stops the second tick before it calls Stripe")
	require.Equal(t, 2*orders, f.fake.Created(stripefake.KindRefund))
	var succeeded, requests int
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FILTER (WHERE status = 'succeeded'), count(DISTINCT refund_request_id)
		FROM refunds`).Scan(&succeeded, &requests))
	require.Equal(t, 2*orders, succeeded)
	require.Equal(t, 2*orders, requests, "one row per request")
	for i := range orders {
		require.Equal(t, int64(10000), f.fake.Refunded(fmt.Sprintf("pi_ord_%02d", i)))
	}
	require.Zero(t, f.fake.RequestsWithoutKey())
}
