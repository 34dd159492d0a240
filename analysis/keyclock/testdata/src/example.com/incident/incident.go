// Package incident holds the key that made two promotion codes: a 30-day
// epoch bucket of the clock, in the library's builder and in stripe-go.
package incident

import (
	"fmt"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/stripe/stripe-go/v76"
)

var keys = idempotency.KeySpace{Namespace: "loyalty.anniversary", Version: 1}

// promoKey is floor(now / 86400000 / 30) as a key part.
func promoKey(userID string) (idempotency.Key, error) { // want promoKey:`^result r0 from the clock: time.Now → .UnixMilli → / → idempotency.Int\("bucket"\) → idempotency.KeySpace.Key; param 0 to result r0; param 0 to sink: idempotency.Str\("user"\)$`
	bucket := time.Now().UnixMilli() / 86400000 / 30
	return keys.Key(idempotency.Str("user", userID), idempotency.Int("bucket", bucket)) // want `^idempotency key derived from the clock: time.Now → .UnixMilli → / → idempotency.Int\("bucket"\)$`
}

// originalParams is the original job's Stripe key, written by hand.
func originalParams(userID string) *stripe.PromotionCodeParams { // want originalParams:`^param 0 to sink: fmt.Sprintf → stripe.Params.SetIdempotencyKey$`
	p := &stripe.PromotionCodeParams{Coupon: stripe.String("ANNIV10")}
	p.SetIdempotencyKey(fmt.Sprintf("promo-%s-%d", userID, time.Now().Unix()/86400/30)) // want `^idempotency key derived from the clock: time.Now → .Unix → / → fmt.Sprintf → stripe.Params.SetIdempotencyKey$`
	return p
}
