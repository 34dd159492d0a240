// Package clocktest is the repository's one fake clock, for tests that
// expire leases, due times and dedup windows without sleeping. Pass
// Clock.Now wherever a store, an executor or a fake provider takes a
// clock (idempotency.MemStoreConfig.Now, idempotency.Config.Now,
// pgguard.Config.Now, stripefake's clock), so they all agree.
package clocktest

import (
	"context"
	"sync"
	"time"
)

// Start is the instant a new Clock shows.
var Start = time.Date(2026, 3, 14, 9, 0, 0, 0, time.UTC)

// Clock is a fake clock, safe for concurrent use. It moves only when told.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a clock stopped at Start.
func New() *Clock { return &Clock{t: Start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d (backward for a negative d).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// Sleep waits for d by moving the clock forward by d at once, for
// idempotency.Config.Sleep: in-run retries then cost no real time. It
// returns ctx's error, as a real wait that ctx ended would.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	c.Advance(d)
	return ctx.Err()
}
