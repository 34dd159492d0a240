package stripeeffect

import (
	"context"
	"strings"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
)

// Refund is a refund to issue on a payment intent. It is also the effect's
// fingerprint (its JSON encoding).
type Refund struct {
	// PaymentIntent is the id of the payment intent to refund. Required.
	PaymentIntent string `json:"payment_intent"`
	// Amount is the amount to refund in the currency's smallest unit.
	// Zero refunds what is left of the payment.
	Amount int64 `json:"amount,omitempty"`
	// Reason, when set, is one of "duplicate", "fraudulent" and
	// "requested_by_customer".
	Reason string `json:"reason,omitempty"`
	// Metadata is attached to the refund, with MetadataKey added.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// RefundResult is what the ledger keeps of a refund.
type RefundResult struct {
	ID            string `json:"id"`
	PaymentIntent string `json:"payment_intent,omitempty"`
	Amount        int64  `json:"amount"`
	Currency      string `json:"currency,omitempty"`
	Status        string `json:"status,omitempty"`
	// Replayed reports that Stripe answered with the saved response of an
	// earlier request under the same key: the refund was issued then.
	Replayed bool `json:"replayed,omitempty"`
}

// RefundResultOf returns the ledger's view of rf, Replayed included.
func RefundResultOf(rf *stripe.Refund) RefundResult {
	if rf == nil {
		return RefundResult{}
	}
	r := RefundResult{ID: rf.ID, Amount: rf.Amount, Currency: string(rf.Currency), Status: string(rf.Status),
		Replayed: Replayed(rf.LastResponse)}
	if rf.PaymentIntent != nil {
		r.PaymentIntent = rf.PaymentIntent.ID
	}
	return r
}

// CreateRefund refunds a payment intent, sending key as the Idempotency-Key
// and its business key (key.Base()) in the metadata under MetadataKey. A
// repeat with the same key and r within DedupWindow returns the same refund
// (Replayed). Errors are classified (see Classify): an amount above what is
// left, or an unknown payment intent, is permanent. Stripe's answer is
// reported with idempotency.Observe. A zero key, an empty payment intent or
// a negative amount sends nothing.
func CreateRefund(ctx context.Context, api *client.API, key idempotency.Key, r Refund) (*stripe.Refund, error) {
	params := &stripe.RefundParams{}
	sent, err := prepare(ctx, api != nil && api.Refunds != nil, &params.Params, key)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(r.PaymentIntent) == "" {
		return nil, invalid("refund without a payment intent")
	}
	if r.Amount < 0 {
		return nil, invalid("refund of a negative amount (%d)", r.Amount)
	}
	params.PaymentIntent = stripe.String(r.PaymentIntent)
	if r.Amount > 0 {
		params.Amount = stripe.Int64(r.Amount)
	}
	if r.Reason != "" {
		params.Reason = stripe.String(r.Reason)
	}
	params.Metadata = metadataWithKey(r.Metadata, key)
	rf, err := api.Refunds.New(params)
	var resp *stripe.APIResponse
	if rf != nil {
		resp = rf.LastResponse
	}
	if err := sent.answered(ctx, resp, err, "refund "+r.PaymentIntent); err != nil {
		return nil, err
	}
	return rf, nil
}

// RefundEffect returns an effect that issues the refund build describes for
// each input, with CreateRefund. It is set for Stripe like
// PromotionCodeEffect: Fingerprint is the JSON of build(in), ExpiredRetry
// with DedupWindow 24 h, Find is FindRefund (the payment intent's refunds),
// Retry a copy of DefaultRetry. Key the effect by the
// refund request (one key per refund the business means to make), never by
// the order alone, or a second partial refund would replay the first.
//
// It panics if api or build is nil.
func RefundEffect[In any](api *client.API, name string, key func(In) (idempotency.Key, error), build func(In) Refund) *idempotency.Effect[In, RefundResult] {
	return newEffect(api, name, key, build, CreateRefund, RefundResultOf, FindRefund, true)
}
