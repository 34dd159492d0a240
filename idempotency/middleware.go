package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// AttemptInfo describes one provider attempt to a Middleware.
type AttemptInfo struct {
	// Effect is the effect's Name.
	Effect string
	// Key is the provider key the attempt sends (its generation included).
	Key Key
	// Number is the attempt's number within the run, from 1.
	Number int
	// Lease is the run's lease.
	Lease time.Duration
	// Extend renews the run's claim to now + lease, fenced by its token:
	// it returns ErrClaimLost once the claim is no longer the caller's (its
	// lease expired and someone took over, or an operator settled it).
	// Use it, or KeepLease, for calls that may outlast the lease.
	Extend func(ctx context.Context, lease time.Duration) error
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

// ErrLeaseLost is the cause KeepLease gives the call's context when an
// extension is refused: the claim is no longer the caller's, so the call
// must stop (its result could not be recorded under the lost claim).
var ErrLeaseLost = errors.New("idempotency: the claim's lease could not be extended")

// KeepLease returns a middleware that keeps a long call's claim: while the
// attempt runs, it extends the lease by the run's lease each time tick
// fires, and cancels the call's context (cause ErrLeaseLost, wrapping the
// store's error) as soon as an extension is refused. tick returns a
// channel that fires every interval and a stop function; nil means a
// time.Ticker every third of the lease. Tests pass a channel they fire
// by hand.
func KeepLease(tick func(lease time.Duration) (<-chan time.Time, func())) Middleware {
	if tick == nil {
		tick = func(lease time.Duration) (<-chan time.Time, func()) {
			t := time.NewTicker(max(lease/3, time.Millisecond))
			return t.C, t.Stop
		}
	}
	return func(ctx context.Context, a AttemptInfo, next func(context.Context) error) error {
		if a.Extend == nil || a.Lease <= 0 {
			return next(ctx)
		}
		callCtx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		c, stop := tick(a.Lease)
		defer stop()
		done := make(chan struct{})
		kept := make(chan struct{})
		go func() {
			defer close(kept)
			for {
				select {
				case <-done:
					return
				case <-c:
					if err := a.Extend(context.WithoutCancel(ctx), a.Lease); err != nil {
						cancel(fmt.Errorf("%w: %w", ErrLeaseLost, err))
						return
					}
				}
			}
		}()
		err := next(callCtx)
		close(done)
		<-kept
		if cause := context.Cause(callCtx); errors.Is(cause, ErrLeaseLost) && err != nil {
			return fmt.Errorf("%w (call: %w)", cause, err)
		}
		return err
	}
}
