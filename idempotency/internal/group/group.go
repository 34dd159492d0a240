// Package group gathers requests from concurrent callers and sends them in
// groups: the machinery behind idempotency.GroupCommit and the sweep's
// grouped completions. It knows nothing of stores; a Batcher is given the
// function that sends one group.
package group

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrResults is returned to every member of a group whose send returned
// a number of results other than the number of items.
var ErrResults = errors.New("group: results do not match the items sent")

// ErrPanic is returned to the members of a group whose send panicked, all
// but the one the panic goes on in.
var ErrPanic = errors.New("group: the send panicked")

// Batcher gathers items into groups and sends each group with one call to
// Send. A group is sent when it holds Max items, when Window has passed
// since its first item arrived, when Flush or Close is called, whichever
// comes first. Every member waits for its group's answer. It is safe for
// concurrent use. Configure it before the first Add.
type Batcher[T, R any] struct {
	// Send sends one group and returns one result per item, in order. An
	// error is the group's: every member gets it.
	Send func(items []T) ([]R, error)
	// Max is the largest group; at least 1.
	Max int
	// Window bounds how long an item waits for others. Zero or less: a
	// group waits for Max items, Flush or Close only.
	Window time.Duration
	// After returns a channel that fires once d has passed; nil means
	// time.After. Tests pass one they control.
	After func(d time.Duration) <-chan time.Time

	mu     sync.Mutex
	open   *batch[T, R]
	closed bool
}

type batch[T, R any] struct {
	items   []T
	res     []R
	err     error
	ready   chan struct{} // closed when the group must be sent now
	sealed  bool          // ready closed (under the Batcher's lock)
	sending bool          // a member took it upon itself to send (under the lock)
	done    chan struct{} // closed when res and err are set
}

// Add adds item to the open group (opening one if needed) and returns the
// function that waits for its result; call it exactly once. The first
// member of a group runs its Window timer; once the group must go, the
// first member to see it sends it.
func (b *Batcher[T, R]) Add(item T) (wait func() (R, error)) { return b.AddIf(item, nil) }

// AddIf is Add, and then sends the open group at once when full says so.
// full is called under the Batcher's lock with the items of the open group,
// item last: exactly the members still waiting for a group to go, none of
// an earlier group already sent. A nil full is never full.
func (b *Batcher[T, R]) AddIf(item T, full func(open []T) bool) (wait func() (R, error)) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return func() (R, error) { return b.sendOne(item) }
	}
	g, leader := b.open, false
	if g == nil {
		g = &batch[T, R]{ready: make(chan struct{}), done: make(chan struct{})}
		b.open, leader = g, true
	}
	i := len(g.items)
	g.items = append(g.items, item)
	if len(g.items) >= max(b.Max, 1) || (full != nil && full(g.items)) {
		b.seal(g)
	}
	b.mu.Unlock()
	return func() (R, error) {
		var timer <-chan time.Time
		if leader && b.Window > 0 {
			after := b.After
			if after == nil {
				after = time.After
			}
			timer = after(b.Window)
		}
		select {
		case <-g.ready:
		case <-g.done:
		case <-timer:
		}
		b.send(g)
		if g.err != nil {
			var zero R
			return zero, g.err
		}
		return g.res[i], nil
	}
}

// Do adds item and waits for its result.
func (b *Batcher[T, R]) Do(item T) (R, error) { return b.Add(item)() }

// Flush sends the open group now, if there is one, without waiting for it.
func (b *Batcher[T, R]) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open != nil {
		b.seal(b.open)
	}
}

// FlushIf sends the open group now, if there is one and full, called
// under the Batcher's lock with its items, says so.
func (b *Batcher[T, R]) FlushIf(full func(open []T) bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open != nil && full(b.open.items) {
		b.seal(b.open)
	}
}

// Close sends the open group now; every later Add is sent on its own at
// once. It does not wait for groups under way.
func (b *Batcher[T, R]) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.open != nil {
		b.seal(b.open)
	}
}

// seal takes g out of reach of later Adds and marks it ready to go. The
// caller holds b.mu.
func (b *Batcher[T, R]) seal(g *batch[T, R]) {
	if b.open == g {
		b.open = nil
	}
	if !g.sealed {
		g.sealed = true
		close(g.ready)
	}
}

// send seals g and sends it, unless another member already does; either way
// it returns once g's answer is published.
func (b *Batcher[T, R]) send(g *batch[T, R]) {
	b.mu.Lock()
	b.seal(g)
	mine := !g.sending
	g.sending = true
	items := g.items
	b.mu.Unlock()
	if mine {
		b.sendGroup(g, items)
	}
	<-g.done
}

// sendGroup sends items and publishes the answer to g's members. If Send
// panics (a hook of one member did), every other member gets ErrPanic
// instead of waiting for ever, and the panic goes on in this one.
func (b *Batcher[T, R]) sendGroup(g *batch[T, R], items []T) {
	published := false
	defer func() {
		if published {
			return
		}
		p := recover() // nil when Send called runtime.Goexit
		g.err = fmt.Errorf("%w: %v", ErrPanic, p)
		close(g.done)
		if p != nil {
			panic(p)
		}
	}()
	res, err := b.Send(items)
	if err == nil && len(res) != len(items) {
		err = fmt.Errorf("%w: %d results for %d items", ErrResults, len(res), len(items))
	}
	g.res, g.err = res, err
	published = true
	close(g.done)
}

func (b *Batcher[T, R]) sendOne(item T) (R, error) {
	var zero R
	res, err := b.Send([]T{item})
	if err != nil {
		return zero, err
	}
	if len(res) != 1 {
		return zero, fmt.Errorf("%w: %d results for 1 item", ErrResults, len(res))
	}
	return res[0], nil
}

// Values returns a context whose values are those of first, then those of
// then; its deadline and cancellation are first's. A group's hooks run
// under the group's context (a transaction in it) and still see their own
// caller's values (a trace span, a logger).
func Values(first, then context.Context) context.Context {
	return valuesCtx{Context: first, then: then}
}

// WithCallerValues wraps a hook that will run in a group, so that the
// context it gets carries the values of its caller's ctx too, after those
// of the group's own context (Values). A nil hook stays nil.
func WithCallerValues(ctx context.Context, hook func(context.Context) error) func(context.Context) error {
	if hook == nil {
		return nil
	}
	return func(groupCtx context.Context) error { return hook(Values(groupCtx, ctx)) }
}

type valuesCtx struct {
	context.Context
	then context.Context
}

func (c valuesCtx) Value(key any) any {
	if v := c.Context.Value(key); v != nil {
		return v
	}
	return c.then.Value(key)
}
