// Package stripekeys sets stripe-go's IdempotencyKey field from the clock
// and from randomness.
package stripekeys

import (
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/stripe/stripe-go/v76"
)

func field() *stripe.PromotionCodeParams { // want field:`^result f0/f0 from the clock: time.Now → .Unix → / → strconv.FormatInt → \+ → stripe.String$`
	p := &stripe.PromotionCodeParams{}
	p.IdempotencyKey = stripe.String("promo-" + strconv.FormatInt(time.Now().Unix()/2592000, 10)) // want `^idempotency key derived from the clock: time.Now → .Unix → / → strconv.FormatInt → \+ → stripe.String → stripe.Params.IdempotencyKey$`
	return p
}

func literal(customer string) *stripe.PromotionCodeParams { // want literal:`^result f0/f0 from randomness: uuid.NewString → stripe.String; param 0 to result f2$`
	return &stripe.PromotionCodeParams{
		Params:   stripe.Params{IdempotencyKey: stripe.String(uuid.NewString())}, // want `^idempotency key derived from randomness: uuid.NewString → stripe.String → stripe.Params.IdempotencyKey$`
		Customer: stripe.String(customer),
	}
}

func stable(customer, coupon string) *stripe.PromotionCodeParams { // want stable:`param 0 to sink: \+ → stripe.Params.SetIdempotencyKey`
	p := &stripe.PromotionCodeParams{Customer: stripe.String(customer)}
	p.SetIdempotencyKey("promo-" + customer + "-" + coupon)
	return p
}
