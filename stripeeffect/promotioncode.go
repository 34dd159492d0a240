package stripeeffect

import (
	"context"
	"strings"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
)

// PromotionCode is a one-time promotion code to create. It is also the
// effect's fingerprint (its JSON encoding): every field is part of the
// request, so the same key with another value is a mismatch.
type PromotionCode struct {
	// Coupon is the id of the coupon the code applies. Required.
	Coupon string `json:"coupon"`
	// Customer, when set, is the only customer who may redeem the code.
	Customer string `json:"customer,omitempty"`
	// Code is the customer-facing code. Empty lets Stripe generate one.
	// Stripe refuses a code equal (ignoring case) to an active one.
	Code string `json:"code,omitempty"`
	// Metadata is attached to the code, with MetadataKey added.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// PromotionCodeResult is what the ledger keeps of a promotion code.
type PromotionCodeResult struct {
	ID       string `json:"id"`
	Code     string `json:"code"`
	Coupon   string `json:"coupon,omitempty"`
	Customer string `json:"customer,omitempty"`
	Active   bool   `json:"active"`
	// Replayed reports that Stripe answered with the saved response of an
	// earlier request under the same key (a takeover after a crash, or an
	// in-run retry after a lost response): the code was created then.
	Replayed bool `json:"replayed,omitempty"`
}

// PromotionCodeResultOf returns the ledger's view of pc, Replayed included.
func PromotionCodeResultOf(pc *stripe.PromotionCode) PromotionCodeResult {
	if pc == nil {
		return PromotionCodeResult{}
	}
	r := PromotionCodeResult{ID: pc.ID, Code: pc.Code, Active: pc.Active, Replayed: Replayed(pc.LastResponse)}
	if pc.Coupon != nil {
		r.Coupon = pc.Coupon.ID
	}
	if pc.Customer != nil {
		r.Customer = pc.Customer.ID
	}
	return r
}

// CreatePromotionCode creates a promotion code that can be redeemed once
// (max_redemptions 1), sending key as the Idempotency-Key and its business
// key (key.Base()) in the metadata under MetadataKey. A repeat with the same
// key and p within DedupWindow returns the same code (Replayed). Errors are
// classified (see Classify), and Stripe's answer is reported to the
// executor's attempt with idempotency.Observe; a zero key or an empty coupon
// sends nothing.
func CreatePromotionCode(ctx context.Context, api *client.API, key idempotency.Key, p PromotionCode) (*stripe.PromotionCode, error) {
	params := &stripe.PromotionCodeParams{}
	sent, err := prepare(ctx, api != nil && api.PromotionCodes != nil, &params.Params, key)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(p.Coupon) == "" {
		return nil, invalid("promotion code without a coupon")
	}
	params.Coupon = stripe.String(p.Coupon)
	params.MaxRedemptions = stripe.Int64(1)
	if p.Customer != "" {
		params.Customer = stripe.String(p.Customer)
	}
	if p.Code != "" {
		params.Code = stripe.String(p.Code)
	}
	params.Metadata = metadataWithKey(p.Metadata, key)
	pc, err := api.PromotionCodes.New(params)
	if err := sent.answered(ctx, promotionCodeResponse(pc), err, "create promotion code"); err != nil {
		return nil, err
	}
	return pc, nil
}

// DeactivatePromotionCode sets the promotion code's active flag to false
// (the revocation of a code given by mistake), sending key as the
// Idempotency-Key. Build the key from the code's id (hazard 9: a key reused
// for another code is a mismatch). Deactivating twice is harmless. Errors
// are classified (see Classify) and the answer observed, as for
// CreatePromotionCode; a zero key or an empty id sends nothing.
func DeactivatePromotionCode(ctx context.Context, api *client.API, key idempotency.Key, promotionCodeID string) (*stripe.PromotionCode, error) {
	params := &stripe.PromotionCodeParams{}
	sent, err := prepare(ctx, api != nil && api.PromotionCodes != nil, &params.Params, key)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(promotionCodeID) == "" {
		return nil, invalid("deactivate a promotion code without an id")
	}
	params.Active = stripe.Bool(false)
	pc, err := api.PromotionCodes.Update(promotionCodeID, params)
	if err := sent.answered(ctx, promotionCodeResponse(pc), err, "deactivate promotion code "+promotionCodeID); err != nil {
		return nil, err
	}
	return pc, nil
}

func promotionCodeResponse(pc *stripe.PromotionCode) *stripe.APIResponse {
	if pc == nil {
		return nil
	}
	return pc.LastResponse
}

// PromotionCodeEffect returns an effect that creates the one-time promotion
// code build describes for each input, with CreatePromotionCode.
//
// The effect is set for Stripe: Fingerprint is the JSON of build(in);
// Expired is idempotency.ExpiredRetry with DedupWindow 24 h, so a claim left
// by a crashed worker, or an attempt whose answer was lost, is retried under
// the same key and Stripe replays the code it created; Find is
// FindPromotionCode, so a record in doubt (past the window, or after a
// replayed 500) is settled by asking Stripe instead of sending blindly;
// Retry is a copy of DefaultRetry. build is called for the fingerprint, for
// each attempt and for each lookup: it must depend on in only. Set other
// fields (OnComplete, Lease) before the first run; set Find to nil to leave
// records in doubt to an operator.
//
// It panics if api or build is nil.
func PromotionCodeEffect[In any](api *client.API, name string, key func(In) (idempotency.Key, error), build func(In) PromotionCode) *idempotency.Effect[In, PromotionCodeResult] {
	return newEffect(api, name, key, build, CreatePromotionCode, PromotionCodeResultOf, FindPromotionCode, true)
}

// DeactivatePromotionCodeEffect returns an effect that deactivates the
// promotion code whose id promotionCodeID gives for each input, with
// DeactivatePromotionCode. Its fingerprint is the id. Deactivation is safe
// to repeat, so an expired claim is always taken over (ExpiredRetry, no
// DedupWindow). Its Find is FindDeactivatedPromotionCode: a record in doubt
// (a replayed 500, which Stripe would hand back under the same key) is
// settled by reading the code, applied if it is inactive, sent again under
// the next key generation if it is still active. Set Find to nil to leave
// such records to an operator. It panics if api or promotionCodeID is nil.
func DeactivatePromotionCodeEffect[In any](api *client.API, name string, key func(In) (idempotency.Key, error), promotionCodeID func(In) string) *idempotency.Effect[In, PromotionCodeResult] {
	return newEffect(api, name, key, promotionCodeID, DeactivatePromotionCode, PromotionCodeResultOf, FindDeactivatedPromotionCode, false)
}
