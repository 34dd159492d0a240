// Package stripe is a stub of stripe-go's root package.
package stripe

type Params struct {
	IdempotencyKey *string
	Metadata       map[string]string
}

func (p *Params) SetIdempotencyKey(val string) { p.IdempotencyKey = &val }

type PromotionCodeParams struct {
	Params   `form:"*"`
	Coupon   *string
	Customer *string
}

func String(v string) *string { return &v }
