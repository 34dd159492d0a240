package stripeeffect

import (
	"context"
	"fmt"
	"strings"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
)

// findPageSize is the page size of the lists the Find functions walk:
// Stripe's maximum, so that a lookup makes as few list calls as it can.
const findPageSize = 100

// FindPromotionCode reports whether the promotion code CreatePromotionCode
// would create for key and p exists, without creating anything: it lists
// the codes of p.Coupon restricted to p.Customer (all the coupon's codes
// when p.Customer is empty, which may take more pages), newest first, and
// stops at the first whose metadata holds key's business key under
// MetadataKey. It returns that code's PromotionCodeResult (Replayed false)
// and true; false and a nil error when no code holds the key; or an error,
// classified by Classify, when a page could not be read (then nothing is
// known).
//
// The business key (key.Base(), HMAC'd in HMAC mode) is matched exactly, as
// CreatePromotionCode stored it: a code created under any provider-key
// generation of key is found, and so is one created under key itself. A
// zero key, an empty coupon or a nil client sends nothing and returns a
// permanent ErrNoKey or ErrInvalidRequest. See "Finding an object" in the
// package documentation.
func FindPromotionCode(ctx context.Context, api *client.API, key idempotency.Key, p PromotionCode) (PromotionCodeResult, bool, error) {
	if err := prepareFind(key, api != nil && api.PromotionCodes != nil); err != nil {
		return PromotionCodeResult{}, false, err
	}
	if strings.TrimSpace(p.Coupon) == "" {
		return PromotionCodeResult{}, false, invalid("find a promotion code without a coupon")
	}
	params := &stripe.PromotionCodeListParams{Coupon: stripe.String(p.Coupon)}
	if p.Customer != "" {
		params.Customer = stripe.String(p.Customer)
	}
	params.Context = ctx
	params.Limit = stripe.Int64(findPageSize)
	it := api.PromotionCodes.List(params)
	for it.Next() {
		if pc := it.PromotionCode(); holdsKey(pc.Metadata, key) {
			return PromotionCodeResultOf(pc), true, nil
		}
	}
	if err := it.Err(); err != nil {
		return PromotionCodeResult{}, false, Classify(fmt.Errorf("stripeeffect: find promotion code of coupon %s: %w", p.Coupon, err))
	}
	return PromotionCodeResult{}, false, nil
}

// FindRefund reports whether the refund CreateRefund would issue for key
// and r exists, without refunding: it lists the refunds of r.PaymentIntent,
// newest first, and stops at the first whose metadata holds key's business
// key under MetadataKey. It returns that refund's RefundResult (Replayed
// false) and true; false and a nil error when no refund holds the key; or
// an error, classified by Classify, when a page could not be read.
//
// The business key is matched as for FindPromotionCode, whatever the
// generation CreateRefund was sent under. A zero key, an empty payment
// intent or a nil client sends nothing and returns a permanent ErrNoKey or
// ErrInvalidRequest.
func FindRefund(ctx context.Context, api *client.API, key idempotency.Key, r Refund) (RefundResult, bool, error) {
	if err := prepareFind(key, api != nil && api.Refunds != nil); err != nil {
		return RefundResult{}, false, err
	}
	if strings.TrimSpace(r.PaymentIntent) == "" {
		return RefundResult{}, false, invalid("find a refund without a payment intent")
	}
	params := &stripe.RefundListParams{PaymentIntent: stripe.String(r.PaymentIntent)}
	params.Context = ctx
	params.Limit = stripe.Int64(findPageSize)
	it := api.Refunds.List(params)
	for it.Next() {
		if rf := it.Refund(); holdsKey(rf.Metadata, key) {
			return RefundResultOf(rf), true, nil
		}
	}
	if err := it.Err(); err != nil {
		return RefundResult{}, false, Classify(fmt.Errorf("stripeeffect: find refund of %s: %w", r.PaymentIntent, err))
	}
	return RefundResult{}, false, nil
}

// FindCredit reports whether the balance credit CreditBalance would give
// for key and c exists, without crediting: it lists the balance
// transactions of c.Customer, newest first, and stops at the first whose
// metadata holds key's business key under MetadataKey. It returns that
// transaction's CreditResult (Replayed false) and true; false and a nil
// error when none holds the key; or an error, classified by Classify, when a
// page could not be read (an unknown customer is a permanent 404).
//
// The business key is matched as for FindPromotionCode, whatever the
// generation CreditBalance was sent under. A zero key, an empty customer or
// a nil client sends nothing and returns a permanent ErrNoKey or
// ErrInvalidRequest.
func FindCredit(ctx context.Context, api *client.API, key idempotency.Key, c Credit) (CreditResult, bool, error) {
	if err := prepareFind(key, api != nil && api.CustomerBalanceTransactions != nil); err != nil {
		return CreditResult{}, false, err
	}
	if strings.TrimSpace(c.Customer) == "" {
		return CreditResult{}, false, invalid("find a credit without a customer")
	}
	params := &stripe.CustomerBalanceTransactionListParams{Customer: stripe.String(c.Customer)}
	params.Context = ctx
	params.Limit = stripe.Int64(findPageSize)
	it := api.CustomerBalanceTransactions.List(params)
	for it.Next() {
		if bt := it.CustomerBalanceTransaction(); holdsKey(bt.Metadata, key) {
			return CreditResultOf(bt), true, nil
		}
	}
	if err := it.Err(); err != nil {
		return CreditResult{}, false, Classify(fmt.Errorf("stripeeffect: find credit of customer %s: %w", c.Customer, err))
	}
	return CreditResult{}, false, nil
}

// FindDeactivatedPromotionCode reports whether the promotion code
// promotionCodeID is inactive, as DeactivatePromotionCode leaves it: it
// reads the code (GET /v1/promotion_codes/{id}, read-after-write
// consistent) and writes nothing. An inactive code returns its
// PromotionCodeResult (Replayed false) and true, whoever deactivated it:
// the state the effect wants holds, and deactivating again would change
// nothing. An active code returns false and a nil error: the deactivation
// did not happen, and sending it again (under the next provider-key
// generation, so that Stripe does not replay a saved failure) is safe. An
// error, classified by Classify, means nothing is known; a code that does
// not exist is Stripe's 404, a permanent error.
//
// A deactivation is an update, not a create: it leaves no object holding
// the key, so this finder looks at the code itself rather than at metadata.
// A zero key, an empty id or a nil client sends nothing and returns a
// permanent ErrNoKey or ErrInvalidRequest.
func FindDeactivatedPromotionCode(ctx context.Context, api *client.API, key idempotency.Key, promotionCodeID string) (PromotionCodeResult, bool, error) {
	if err := prepareFind(key, api != nil && api.PromotionCodes != nil); err != nil {
		return PromotionCodeResult{}, false, err
	}
	if strings.TrimSpace(promotionCodeID) == "" {
		return PromotionCodeResult{}, false, invalid("find a deactivated promotion code without an id")
	}
	params := &stripe.PromotionCodeParams{}
	params.Context = ctx
	pc, err := api.PromotionCodes.Get(promotionCodeID, params)
	if err != nil {
		return PromotionCodeResult{}, false, Classify(fmt.Errorf("stripeeffect: find deactivated promotion code %s: %w", promotionCodeID, err))
	}
	if pc.Active {
		return PromotionCodeResult{}, false, nil
	}
	return PromotionCodeResultOf(pc), true, nil
}

// prepareFind refuses a lookup without a key or a client: nothing may be
// sent when it fails.
func prepareFind(key idempotency.Key, hasClient bool) error {
	if key.IsZero() {
		return idempotency.Permanent(ErrNoKey)
	}
	if !hasClient {
		return invalid("nil or uninitialised *client.API (build it with NewAPI or client.New)")
	}
	return nil
}

// holdsKey reports whether metadata written by the create adapters holds
// key's business key.
func holdsKey(metadata map[string]string, key idempotency.Key) bool {
	v, ok := metadata[MetadataKey]
	return ok && v == key.Base().String()
}
