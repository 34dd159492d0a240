package docsnippets_test

// The sources of README.md's Go blocks, run as tests: on PostgreSQL through
// pgtest, against the fake Stripe.

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// Candidate is a Pro subscriber past twelve months, as the README's flow
// reads it from the database.
type Candidate struct{ UserID, SubscriptionID, CustomerID string }

// readmeFlow is README.md's "How one effect runs" code.
func readmeFlow(ctx context.Context, pool *pgxpool.Pool, api *client.API, candidate Candidate, all []Candidate) (
	idempotency.Result[stripeeffect.PromotionCodeResult], sweep.Report, error) {
	// snippet:readme-flow
	keys := idempotency.KeySpace{Namespace: "loyalty.anniversary", Version: 1}

	promo := stripeeffect.PromotionCodeEffect(api, "loyalty.anniversary",
		// Business identity only: user, subscription (the lifecycle), milestone.
		func(c Candidate) (idempotency.Key, error) {
			return keys.Key(idempotency.Str("user", c.UserID), idempotency.Str("sub", c.SubscriptionID), idempotency.Int("milestone", 12))
		},
		func(c Candidate) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{Coupon: "ANNIV10", Customer: c.CustomerID}
		})

	ledger, _ := pgguard.New(pool, nil) // after pgguard.Migrate(ctx, pool, nil)
	exec, _ := idempotency.NewExecutor(ledger, nil)

	res, err := idempotency.Run(ctx, exec, promo, candidate)          // one delivery
	report, err := sweep.Run(ctx, exec, promo, sweep.Slice(all), nil) // a cron tick
	// end snippet
	return res, report, err
}

func TestReadmeFlowMakesOneCodePerSubscriber(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	fake := stripefake.New()
	defer fake.Close()
	fake.AddCoupon("ANNIV10", 10)
	api := stripeeffect.NewAPI("sk_test_readme", &stripeeffect.APIConfig{URL: fake.URL()})

	all := []Candidate{{"u1", "sub_1", "cus_1"}, {"u2", "sub_2", "cus_2"}, {"u3", "sub_3", "cus_3"}}
	res, report, err := readmeFlow(ctx, pool, api, all[0], all)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	// The tick found u1 done by the delivery: no second code.
	require.Equal(t, 1, report.Outcomes[idempotency.OutcomeAlreadyApplied], "%v", report)
	require.Equal(t, 2, report.Outcomes[idempotency.OutcomeApplied], "%v", report)
	require.Equal(t, 3, fake.Created(stripefake.KindPromotionCode))
}

// RefundRequest is one refund a support agent asked for.
type RefundRequest struct {
	OrderID, RequestID string
	Amount             int64
}

var refundKeys = idempotency.KeySpace{Namespace: "orders.refund", Version: 1}

// newRefundEffect is the service's refund effect, as production builds it.
func newRefundEffect(api *client.API) *idempotency.Effect[RefundRequest, stripeeffect.RefundResult] {
	return stripeeffect.RefundEffect(api, "orders.refund",
		func(r RefundRequest) (idempotency.Key, error) {
			return refundKeys.Key(idempotency.Str("refund_request", r.RequestID))
		},
		func(r RefundRequest) stripeeffect.Refund {
			return stripeeffect.Refund{PaymentIntent: "pi_1", Amount: r.Amount} // the order's payment
		})
}

// migrationSQL is the team's migration of its loyalty_discounts table.
const migrationSQL = `
CREATE TABLE loyalty_discounts (
	user_id bigint NOT NULL,
	status  text   NOT NULL
);
CREATE UNIQUE INDEX uq_loyalty_discounts_active ON loyalty_discounts (user_id)
	WHERE status IN ('applied', 'skipped');`

// snippet:readme-contract
// One PostgreSQL server per test binary: TEST_DATABASE_URL, else a container.
func TestMain(m *testing.M) { pgtest.Main(m) }

func TestRefundEffectContract(t *testing.T) {
	fake := stripefake.New()
	defer fake.Close()
	fake.AddPaymentIntent("pi_1", 10_000, "usd")
	eff := newRefundEffect(stripeeffect.NewAPI("sk_test", &stripeeffect.APIConfig{URL: fake.URL()}))

	pool := pgtest.Pool(t) // a schema of this test's own, dropped when it ends
	if err := pgguard.Migrate(context.Background(), pool, nil); err != nil {
		t.Fatal(err)
	}
	effecttest.Run(t, effecttest.Case[RefundRequest, stripeeffect.RefundResult]{
		Effect: eff, // exactly as production builds it
		Inputs: []RefundRequest{{"ord_1", "rr_1", 100}, {"ord_1", "rr_2", 200}, {"ord_1", "rr_3", 300}, {"ord_1", "rr_4", 400}},
		Mutate: func(r RefundRequest) RefundRequest { r.Amount++; return r }, // same key, other payload
		NewStore: func(now func() time.Time) idempotency.Store {
			ledger, err := pgguard.New(pool, &pgguard.Config{Now: now})
			if err != nil {
				t.Fatal(err)
			}
			return ledger
		},
		Effects: func() int { return fake.Created(stripefake.KindRefund) }, // distinct refunds, not requests
	})
}

func TestLoyaltyDiscountsGuard(t *testing.T) {
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: pgguard.Guard{
			Table: "loyalty_discounts", Columns: []string{"user_id"},
			StatusColumn: "status", ActiveStatuses: []string{"applied", "skipped"},
			IndexName: "uq_loyalty_discounts_active",
		},
		Migrate: func(ctx context.Context, db pgguard.DBTX) error { _, err := db.Exec(ctx, migrationSQL); return err },
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO loyalty_discounts (user_id, status) VALUES ($1, $2)`, []any{key[0], status}
		},
		Key:            func(i int) []any { return []any{int64(1000 + i)} },
		ExemptStatuses: []string{"revoked"},
	})
}

// end snippet
