package idempotency

import "context"

// AttemptInfo describes one provider attempt to a Middleware.
type AttemptInfo struct {
	// Effect is the effect's Name.
	Effect string
	// Key is the provider key the attempt sends (its generation included).
	Key Key
	// Number is the attempt's number within the run, from 1.
	Number int
}

// Middleware wraps each provider attempt of a run, as River's worker
// middleware wraps each job: rate limits, tracing, metrics. It calls next
// to make the attempt and returns its error (or its own).
//
// Everything a middleware does before calling next happens before the
// attempt is marked as started: a middleware that waits (for a rate
// limiter's token, say) and then returns without calling next leaves the
// key free at once (released), and a worker killed during that wait leaves
// a record the next run takes over, never one in doubt. A middleware must
// call next at most once.
type Middleware func(ctx context.Context, a AttemptInfo, next func(ctx context.Context) error) error

// WithMiddleware returns an executor that shares x's store and
// configuration and runs mw around each attempt, inside x's own middleware
// (Config.Middleware runs first). x is unchanged.
func (x *Executor) WithMiddleware(mw ...Middleware) *Executor {
	y := *x
	y.mw = append(append([]Middleware(nil), x.mw...), mw...)
	return &y
}

// chain runs the middleware around inner.
func chain(mw []Middleware, ctx context.Context, a AttemptInfo, inner func(context.Context) error) error {
	if len(mw) == 0 {
		return inner(ctx)
	}
	return mw[0](ctx, a, func(ctx context.Context) error { return chain(mw[1:], ctx, a, inner) })
}
