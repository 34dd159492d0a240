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
// objects store the effect's business key (Key.Base: the same for every
// provider-key generation, HMAC'd in HMAC mode), so that the Find functions,
// or an operator, can find the object at Stripe. It replaces any value the
// caller put under the same name.
const MetadataKey = "idempotency_key"

// prepare refuses a request without a key or a client (hasClient: the
// *client.API and the resource's client are set); otherwise it sets key, as
// the Idempotency-Key header, and ctx on p, with a trace that tells whether
// the request was written. Nothing may be sent when it fails.
func prepare(ctx context.Context, hasClient bool, p *stripe.Params, key idempotency.Key) (*sendTrace, error) {
	if key.IsZero() {
		return nil, idempotency.Permanent(ErrNoKey)
	}
	if !hasClient {
		return nil, invalid("nil or uninitialised *client.API (build it with NewAPI or client.New)")
	}
	if ctx == nil {
		ctx = context.Background()
	}
	t := &sendTrace{}
	p.Context = t.bind(ctx)
	p.SetIdempotencyKey(key.String())
	return t, nil
}

// invalid returns a permanent ErrInvalidRequest: nothing was sent.
func invalid(format string, args ...any) error {
	return idempotency.Permanent(fmt.Errorf("%w: "+format, append([]any{ErrInvalidRequest}, args...)...))
}

// metadataWithKey returns a copy of m with MetadataKey set to the business
// key of key (its generation 1), whatever generation key is.
func metadataWithKey(m map[string]string, key idempotency.Key) map[string]string {
	out := make(map[string]string, len(m)+1)
	maps.Copy(out, m)
	out[MetadataKey] = key.Base().String()
	return out
}

// newEffect builds the effects of this package: build turns the input into
// the request (called once for the fingerprint, once per attempt and once
// per lookup, so it must depend on in only), send sends it, result keeps
// the small part of Stripe's object that the ledger stores, and find, when
// not nil, looks the object up by the business key (Effect.Find).
func newEffect[In, Req, Obj, Out any](
	api *client.API,
	name string,
	key func(In) (idempotency.Key, error),
	build func(In) Req,
	send func(ctx context.Context, api *client.API, key idempotency.Key, req Req) (Obj, error),
	result func(Obj) Out,
	find func(ctx context.Context, api *client.API, key idempotency.Key, req Req) (Out, bool, error),
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
		// k is the provider key (a generation of the business key after
		// a reconciliation found nothing): sent as the Idempotency-Key,
		// while the metadata keeps k.Base().
		Call: func(ctx context.Context, k idempotency.Key, in In) (Out, error) {
			obj, err := send(ctx, api, k, build(in))
			if err != nil {
				var zero Out
				return zero, err
			}
			return result(obj), nil
		},
		Expired:         idempotency.ExpiredRetry,
		Retry:           &retry,
		RememberRefusal: RefusalMemory,
	}
	if find != nil {
		e.Find = func(ctx context.Context, k idempotency.Key, in In) (Out, bool, error) {
			return find(ctx, api, k, build(in))
		}
	}
	if window {
		e.DedupWindow = DedupWindow
	}
	return e
}
