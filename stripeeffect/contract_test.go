package stripeeffect_test

import (
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The effects pass the contract every team's effect must pass, against the
// fake Stripe's count of what it really created.

func newMemStore(now func() time.Time) idempotency.Store {
	return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now})
}

func TestPromotionCodeEffectContract(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var inputs []grant
	for _, u := range []string{"u_1", "u_2", "u_3", "u_4", "u_5", "u_6"} {
		inputs = append(inputs, grant{User: u, Sub: "sub_" + u, Customer: "cus_" + u})
	}
	effecttest.Run(t, effecttest.Case[grant, stripeeffect.PromotionCodeResult]{
		Effect:   b.effect,
		Inputs:   inputs,
		Mutate:   func(g grant) grant { g.Customer += "x"; return g },
		NewStore: newMemStore,
		Effects:  func() int { return b.fake.Created(stripefake.KindPromotionCode) },
	})
	requireNoUnkeyedRequests(t, b.fake)
}

func TestRefundEffectContract(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var inputs []refundRequest
	for _, id := range []string{"rr_1", "rr_2", "rr_3", "rr_4", "rr_5", "rr_6"} {
		inputs = append(inputs, refundRequest{ID: id, PaymentIntent: "pi_1", Amount: 100})
	}
	effecttest.Run(t, effecttest.Case[refundRequest, stripeeffect.RefundResult]{
		Effect:   newRefundEffect(b.api),
		Inputs:   inputs,
		Mutate:   func(r refundRequest) refundRequest { r.Amount++; return r },
		NewStore: newMemStore,
		Effects:  func() int { return b.fake.Created(stripefake.KindRefund) },
	})
	requireNoUnkeyedRequests(t, b.fake)
}

// apology is one customer owed a credit.
type apology struct {
	Customer string
	Amount   int64
}

func TestCreditEffectContract(t *testing.T) {
	t.Parallel()
	b := setup(t)
	creditKeys := idempotency.KeySpace{Namespace: "test.contract.credit", Version: 1}
	eff := stripeeffect.CreditEffect(b.api, "test.contract.credit",
		func(a apology) (idempotency.Key, error) {
			return creditKeys.Key(idempotency.Str("customer", a.Customer))
		},
		func(a apology) stripeeffect.Credit {
			return stripeeffect.Credit{Customer: a.Customer, Amount: a.Amount, Currency: "usd"}
		})
	eff.Retry = &fastRetry
	var inputs []apology
	for _, c := range []string{"cus_c1", "cus_c2", "cus_c3", "cus_c4", "cus_c5", "cus_c6"} {
		inputs = append(inputs, apology{Customer: c, Amount: 500})
	}
	effecttest.Run(t, effecttest.Case[apology, stripeeffect.CreditResult]{
		Effect:   eff,
		Inputs:   inputs,
		Mutate:   func(a apology) apology { a.Amount++; return a },
		NewStore: newMemStore,
		Effects:  func() int { return b.fake.Created(stripefake.KindCustomerBalanceTransaction) },
	})
	requireNoUnkeyedRequests(t, b.fake)
}

func requireNoUnkeyedRequests(t *testing.T, fake *stripefake.Server) {
	t.Helper()
	if n := fake.RequestsWithoutKey() + fake.RequestsWithGeneratedKey(); n != 0 {
		t.Fatalf("%d requests went out without the effect's key", n)
	}
}
