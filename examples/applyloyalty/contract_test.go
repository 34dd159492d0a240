package applyloyalty

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

func TestLoyaltyDiscountsGuardContract(t *testing.T) {
	t.Parallel()
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: Guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			if _, err := db.Exec(ctx, Schema); err != nil {
				return err
			}
			_, err := db.Exec(ctx, `INSERT INTO subscriptions (id, user_id, customer_id, plan, started_at)
				SELECT 'sub_' || g, 'u' || g, 'cus_' || g, 'pro', now() FROM generate_series(0, 99) g`)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO loyalty_discounts (user_id, subscription_id, milestone, promotion_code_id, code, status, idempotency_key)
				VALUES ($1, 'sub_' || substr($1, 2), 12, 'promo_x', 'CODE', $2, 'k')`, []any{key[0], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("u%d", i)} },
		ExemptStatuses: []string{"revoked"},
	})
}

func TestAnniversaryEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	users := f.subscribers(t, 6)
	cands := make([]Candidate, len(users))
	for i, u := range users {
		cands[i] = Candidate{UserID: u, SubscriptionID: "sub_" + u, CustomerID: "cus_" + u, Milestone: MilestoneMonths}
	}
	ok := effecttest.Run(t, effecttest.Case[Candidate, stripeeffect.PromotionCodeResult]{
		Effect: f.p.Effect(),
		Inputs: cands,
		// Same user, subscription and milestone, another Stripe customer:
		// the payload changed under one key.
		Mutate: func(c Candidate) Candidate { c.CustomerID += "_other"; return c },
		NewStore: func(now func() time.Time) idempotency.Store {
			s, err := pgguard.New(f.pool, &pgguard.Config{Now: now})
			require.NoError(t, err)
			return s
		},
		Effects: func() int { return f.fake.Created(stripefake.KindPromotionCode) },
	})
	require.True(t, ok)
	require.Len(t, f.activeDiscounts(t), len(users), "one loyalty_discounts row per user")
}
