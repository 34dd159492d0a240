package orderrefund

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The two contract tests every team adds for its own effect and table.

func TestRefundsGuardContract(t *testing.T) {
	t.Parallel()
	n := 0
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: Guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			if _, err := db.Exec(ctx, Schema); err != nil {
				return err
			}
			_, err := db.Exec(ctx, `
				INSERT INTO orders (id, payment_intent_id, amount_paid_cents, currency) VALUES ('ord_1', 'pi_1', 100000, 'usd');
				INSERT INTO refund_requests (id, order_id, amount_cents) SELECT 'rr_' || g, 'ord_1', 100 FROM generate_series(0, 99) g`)
			return err
		},
		// A fresh Stripe refund id for every row (uq_refunds_stripe_refund),
		// none while reserved (refunds_stripe_id_check).
		Row: func(key []any, status string) (string, []any) {
			n++
			return `INSERT INTO refunds (order_id, refund_request_id, stripe_refund_id, amount_cents, currency, status, idempotency_key)
				VALUES ('ord_1', $1, CASE WHEN $2 = 'reserved' THEN NULL ELSE $3 END, 100, 'usd', $2, 'k')`,
				[]any{key[0], status, fmt.Sprintf("re_%d", n)}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("rr_%d", i)} },
		ExemptStatuses: []string{"failed"},
	})
}

func TestRefundEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for i := range 3 { // two requests per order: reservations share the order lock
		o := fmt.Sprintf("ord_%d", i)
		f.order(t, o, 10000)
		f.request(t, o+"_a", o, 3000)
		f.request(t, o+"_b", o, 4000)
	}
	reqs, err := f.p.Candidates(f.ctx)
	require.NoError(t, err)
	require.Len(t, reqs, 6)
	ok := effecttest.Run(t, effecttest.Case[Request, stripeeffect.RefundResult]{
		Effect: f.p.Effect(),
		Inputs: reqs,
		// Same order and request, another amount: the payload changed
		// under one key.
		Mutate: func(r Request) Request { r.AmountCents++; return r },
		NewStore: func(now func() time.Time) idempotency.Store {
			s, err := pgguard.New(f.pool, &pgguard.Config{Now: now})
			require.NoError(t, err)
			return s
		},
		Effects: func() int { return f.fake.Created(stripefake.KindRefund) },
	})
	require.True(t, ok)

	var succeeded, stripeIDs int
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FILTER (WHERE status = 'succeeded'), count(DISTINCT stripe_refund_id)
		FROM refunds`).Scan(&succeeded, &stripeIDs))
	require.Equal(t, 6, succeeded, "one succeeded refunds row per request, and no other row")
	require.Equal(t, 6, stripeIDs)
	for i := range 3 {
		require.Equal(t, int64(7000), f.fake.Refunded(fmt.Sprintf("pi_ord_%d", i)))
	}
}
