package stripeeffect

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
)

// MetadataKey is the metadata entry in which the adapters that create
// objects store the effect's key (the HMAC'd key in HMAC mode), so that an
// operator reconciling a record can find the object at Stripe. It replaces
// any value the caller put under the same name.
const MetadataKey = "idempotency_key"

// prepare refuses a request without a key or a client (hasClient: the
// *client.API and the resource's client are set) and sets the key, as the
// Idempotency-Key header, and ctx on p. Nothing may be sent when it fails.
func prepare(ctx context.Context, hasClient bool, p *stripe.Params, key idempotency.Key) error {
	if key.IsZero() {
		return idempotency.Permanent(ErrNoKey)
	}
	if !hasClient {
		return invalid("nil or uninitialised *client.API (build it with NewAPI or client.New)")
	}
	p.Context = ctx
	p.SetIdempotencyKey(key.String())
	return nil
}

// invalid returns a permanent ErrInvalidRequest: nothing was sent.
func invalid(format string, args ...any) error {
	return idempotency.Permanent(fmt.Errorf("%w: "+format, append([]any{ErrInvalidRequest}, args...)...))
}

// metadataWithKey returns a copy of m with MetadataKey set to key.
func metadataWithKey(m map[string]string, key idempotency.Key) map[string]string {
	out := make(map[string]string, len(m)+1)
	maps.Copy(out, m)
	out[MetadataKey] = key.String()
	return out
}

// newEffect builds the effects of this package: build turns the input into
// the request (called once for the fingerprint and once per attempt, so it
// must depend on in only), send sends it, and result keeps the small part
// of Stripe's object that the ledger stores.
func newEffect[In, Req, Obj, Out any](
	api *client.API,
	name string,
	key func(In) (idempotency.Key, error),
	build func(In) Req,
	send func(ctx context.Context, api *client.API, key idempotency.Key, req Req) (Obj, error),
	result func(Obj) Out,
	window bool,
) *idempotency.Effect[In, Out] {
	if api == nil {
		panic("stripeeffect: effect " + name + ": nil *client.API")
	}
	if build == nil {
		panic("stripeeffect: effect " + name + ": nil build function")
	}
	retry := DefaultRetry
	e := &idempotency.Effect[In, Out]{
		Name: name,
		Key:  key,
		// The fingerprint is the request as built: the same key with
		// other parameters is refused by the executor before Stripe
		// answers it with an idempotency_error.
		Fingerprint: func(in In) ([]byte, error) { return json.Marshal(build(in)) },
		Call: func(ctx context.Context, k idempotency.Key, in In) (Out, error) {
			obj, err := send(ctx, api, k, build(in))
			if err != nil {
				var zero Out
				return zero, err
			}
			return result(obj), nil
		},
		Expired: idempotency.ExpiredRetry,
		Retry:   &retry,
	}
	if window {
		e.DedupWindow = DedupWindow
	}
	return e
}
