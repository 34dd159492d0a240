package stripeeffect_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

type subscriber struct {
	User, Subscription, Customer string
}

var anniversaryKeys = idempotency.KeySpace{Namespace: "loyalty.anniversary", Version: 1}

// Two deliveries of the same intent create one promotion code: the second
// is answered from the ledger without calling Stripe.
func Example() {
	ctx := context.Background()
	fake := stripefake.New() // in tests; in production, NewAPI(secretKey, nil)
	defer fake.Close()
	fake.AddCoupon("ANNIV10", 10)
	api := stripeeffect.NewAPI("sk_test_example", &stripeeffect.APIConfig{URL: fake.URL()})

	exec, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
	if err != nil {
		panic(err)
	}
	eff := stripeeffect.PromotionCodeEffect(api, "loyalty.anniversary",
		func(s subscriber) (idempotency.Key, error) {
			return anniversaryKeys.Key(idempotency.Str("user", s.User),
				idempotency.Str("sub", s.Subscription), idempotency.Int("milestone", 12))
		},
		func(s subscriber) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{Coupon: "ANNIV10", Customer: s.Customer}
		})

	s := subscriber{User: "u_42", Subscription: "sub_7", Customer: "cus_42"}
	for range 2 {
		res, err := idempotency.Run(ctx, exec, eff, s)
		if err != nil {
			panic(err)
		}
		fmt.Println(res.Outcome, res.Value.ID, res.Value.Code, "calls:", res.Calls)
	}
	fmt.Println("codes created:", fake.Created(stripefake.KindPromotionCode))
	// Output:
	// applied promo_000001 FAKE000001 calls: 1
	// already_applied promo_000001 FAKE000001 calls: 0
	// codes created: 1
}

// The response to a refund is lost after Stripe issued it. The executor
// retries in-run under the same key, and Stripe replays the refund instead
// of issuing a second one.
func ExampleRefundEffect() {
	ctx := context.Background()
	fake := stripefake.New()
	defer fake.Close()
	fake.AddPaymentIntent("pi_1", 5000, "usd")
	fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/refunds"})
	api := stripeeffect.NewAPI("sk_test_example", &stripeeffect.APIConfig{URL: fake.URL()})

	type refundRequest struct {
		ID, PaymentIntent string
		Amount            int64
	}
	keys := idempotency.KeySpace{Namespace: "orders.refund", Version: 1}
	eff := stripeeffect.RefundEffect(api, "orders.refund",
		func(r refundRequest) (idempotency.Key, error) {
			return keys.Key(idempotency.Str("refund_request", r.ID))
		},
		func(r refundRequest) stripeeffect.Refund {
			return stripeeffect.Refund{PaymentIntent: r.PaymentIntent, Amount: r.Amount}
		})
	eff.Retry.InitialBackoff = time.Millisecond // keep the example quick (DefaultRetry waits 500ms)

	exec, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
	if err != nil {
		panic(err)
	}
	res, err := idempotency.Run(ctx, exec, eff, refundRequest{ID: "rr_1", PaymentIntent: "pi_1", Amount: 1200})
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Outcome, res.Value.ID, res.Value.Amount, "calls:", res.Calls, "replayed:", res.Value.Replayed)
	fmt.Println("refunded:", fake.Refunded("pi_1"))
	// Output:
	// applied re_000001 1200 calls: 2 replayed: true
	// refunded: 1200
}

// Stripe saved a 500 under the key and replays it: the error is classified
// for reconciliation, never for a blind retry.
func ExampleClassify() {
	ctx := context.Background()
	fake := stripefake.New()
	defer fake.Close()
	fake.AddCoupon("ANNIV10", 10)
	fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorAfterWrite})
	api := stripeeffect.NewAPI("sk_test_example", &stripeeffect.APIConfig{URL: fake.URL()})
	key := anniversaryKeys.MustKey(idempotency.Str("user", "u_42"))

	for range 2 {
		_, err := stripeeffect.CreatePromotionCode(ctx, api, key, stripeeffect.PromotionCode{Coupon: "ANNIV10"})
		class, _ := idempotency.Classify(err)
		fmt.Println(class, errors.Is(err, idempotency.ErrNeedsReconciliation))
	}
	fmt.Println("codes created:", fake.Created(stripefake.KindPromotionCode))
	// Output:
	// reconcile true
	// reconcile true
	// codes created: 1
}
