package stripefake_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The same idempotency key and parameters give the same promotion code back,
// marked as replayed; only one object is created.
func Example() {
	srv := stripefake.New()
	defer srv.Close()
	srv.AddCoupon("SPRING", 25)
	sc := srv.Client("sk_test_x")

	for range 2 {
		params := &stripe.PromotionCodeParams{
			Coupon:   stripe.String("SPRING"),
			Customer: stripe.String("cus_123"),
		}
		params.SetIdempotencyKey("grant-42")
		pc, err := sc.PromotionCodes.New(params)
		if err != nil {
			panic(err)
		}
		fmt.Println(pc.ID, pc.Coupon.ID, "replayed:", pc.LastResponse.Header.Get("Idempotent-Replayed") == "true")
	}
	fmt.Println("created:", srv.Created(stripefake.KindPromotionCode))
	// Output:
	// promo_000001 SPRING replayed: false
	// promo_000001 SPRING replayed: true
	// created: 1
}

// A response lost after the write: the client sees a network error although
// the refund exists; retrying with the same key returns it.
func ExampleServer_InjectFault() {
	srv := stripefake.New()
	defer srv.Close()
	srv.AddPaymentIntent("pi_1", 1000, "usd")
	sc := srv.Client("sk_test_x")
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/refunds"})

	params := &stripe.RefundParams{PaymentIntent: stripe.String("pi_1"), Amount: stripe.Int64(300)}
	params.SetIdempotencyKey("refund-7")
	_, err := sc.Refunds.New(params)
	var stripeErr *stripe.Error
	fmt.Println("network error:", err != nil && !errors.As(err, &stripeErr))
	fmt.Println("refunded so far:", srv.Refunded("pi_1"))

	rf, err := sc.Refunds.New(params)
	if err != nil {
		panic(err)
	}
	fmt.Println(rf.ID, rf.Amount, rf.Status, "replayed:", rf.LastResponse.Header.Get("Idempotent-Replayed"))
	fmt.Println("refunds created:", srv.Created(stripefake.KindRefund))
	// Output:
	// network error: true
	// refunded so far: 300
	// re_000001 300 succeeded replayed: true
	// refunds created: 1
}

// Reusing a key with other parameters is an idempotency_error.
func ExampleServer_Requests() {
	srv := stripefake.New()
	defer srv.Close()
	sc := srv.Client("sk_test_x")

	credit := func(amount int64) error {
		params := &stripe.CustomerBalanceTransactionParams{
			Customer: stripe.String("cus_123"),
			Amount:   stripe.Int64(amount),
			Currency: stripe.String("usd"),
		}
		params.SetIdempotencyKey("credit-1")
		_, err := sc.CustomerBalanceTransactions.New(params)
		return err
	}
	fmt.Println(credit(-500))
	var stripeErr *stripe.Error
	if errors.As(credit(-600), &stripeErr) {
		fmt.Println(stripeErr.HTTPStatusCode, stripeErr.Type)
	}
	for _, r := range srv.Requests("credit-1") {
		fmt.Println(r.Method, r.Path, r.Status, r.Executed)
	}
	fmt.Println("balance:", srv.CustomerBalance("cus_123"))
	// Output:
	// <nil>
	// 400 idempotency_error
	// POST /v1/customers/cus_123/balance_transactions 200 true
	// POST /v1/customers/cus_123/balance_transactions 400 false
	// balance: -500
}

// Keys are forgotten 24 hours after their first use.
func ExampleServer_Advance() {
	srv := stripefake.New()
	defer srv.Close()
	srv.AddCoupon("SPRING", 25)
	sc := srv.Client("sk_test_x")

	create := func() string {
		params := &stripe.PromotionCodeParams{Coupon: stripe.String("SPRING")}
		params.SetIdempotencyKey("grant-42")
		pc, err := sc.PromotionCodes.New(params)
		if err != nil {
			panic(err)
		}
		return pc.ID
	}
	fmt.Println(create())
	srv.Advance(23 * time.Hour)
	fmt.Println(create())
	srv.Advance(2 * time.Hour)
	fmt.Println(create())
	// Output:
	// promo_000001
	// promo_000001
	// promo_000002
}
