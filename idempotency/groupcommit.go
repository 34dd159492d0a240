package idempotency

import (
	"context"
	"fmt"
	"time"

	"github.com/effectonce/effectonce/idempotency/internal/group"
)

// GroupCommitConfig configures GroupCommit. The zero value is ready to use.
type GroupCommitConfig struct {
	// Window is the longest a claim or a change waits for others before
	// its group is sent: the most each store call of a run is delayed by.
	// Zero means 2 ms.
	Window time.Duration
	// MaxBatch sends a group as soon as it holds this many claims (or
	// changes), without waiting for the window. Set it to the number of
	// runs in flight at once (queue consumers, handler goroutines): when
	// they all arrive, their group goes at once. Zero means 16.
	MaxBatch int
	// After returns a channel that fires once d has passed; nil means
	// time.After. Tests pass one they fire by hand.
	After func(d time.Duration) <-chan time.Time
}

// Defaults of GroupCommitConfig.
const (
	DefaultGroupWindow   = 2 * time.Millisecond
	DefaultGroupMaxBatch = 16
)

// GroupStore is a Store that sends the claims of concurrent runs in one
// ClaimMany and their changes in one TransitionMany (see GroupCommit).
type GroupStore struct {
	store   BatchStore
	claims  *group.Batcher[ClaimRequest, Claim]
	changes *group.Batcher[Change, TransitionResult]
}

var (
	_ BatchStore    = (*GroupStore)(nil)
	_ RefusalLookup = (*GroupStore)(nil)
)

// GroupCommit returns a Store over store for an Executor whose runs are
// concurrent (queue consumers, webhook handlers): the claims that arrive
// within a window are sent in one ClaimMany, and the changes (completions,
// releases, failures, parks, extensions) in one TransitionMany, so that
// eight runs at once cost two statements and two commits instead of
// sixteen. Each run still gets its own answer, decided by the same rules as
// Claim and Transition: its own verdict, its own token, its own fenced
// change; two claims or two changes of one key in a group are decided one
// after the other, never merged. A hook (OnComplete, OnFail) runs in the
// same transaction as its own change, isolated from the group's other hooks,
// and sees the values of its run's context.
//
// A run waits at most cfg.Window per store call for its group to go (less
// when MaxBatch runs arrive first). When a group's statement fails, every
// member gets the error, as a failed Claim or Transition would give it.
// Lookup, ClaimMany and TransitionMany go to store directly. cfg may be nil.
func GroupCommit(store BatchStore, cfg *GroupCommitConfig) (*GroupStore, error) {
	if store == nil {
		return nil, ErrNilStore
	}
	var c GroupCommitConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Window < 0 || c.MaxBatch < 0 {
		return nil, fmt.Errorf("idempotency: group commit: negative window %v or batch %d", c.Window, c.MaxBatch)
	}
	if c.Window == 0 {
		c.Window = DefaultGroupWindow
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultGroupMaxBatch
	}
	// A group's statement belongs to all its members: it runs under a
	// context of its own, never cut by one member's cancellation (the
	// executor's store calls are not cut either).
	bg := context.Background()
	return &GroupStore{
		store: store,
		claims: &group.Batcher[ClaimRequest, Claim]{Max: c.MaxBatch, Window: c.Window, After: c.After,
			Send: func(reqs []ClaimRequest) ([]Claim, error) { return store.ClaimMany(bg, reqs) }},
		changes: &group.Batcher[Change, TransitionResult]{Max: c.MaxBatch, Window: c.Window, After: c.After,
			Send: func(cs []Change) ([]TransitionResult, error) { return store.TransitionMany(bg, cs) }},
	}, nil
}

// Claim implements Store: the request joins the next group of claims.
func (g *GroupStore) Claim(ctx context.Context, req ClaimRequest) (Claim, error) {
	if err := ctx.Err(); err != nil {
		return Claim{}, err
	}
	return g.claims.Do(req)
}

// Transition implements Store: the change joins the next group of changes.
// Its hook, if any, sees ctx's values as well as the group's transaction.
func (g *GroupStore) Transition(ctx context.Context, c Change) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	c.Hook = group.WithCallerValues(ctx, c.Hook)
	r, err := g.changes.Do(c)
	if err != nil {
		return Record{}, err
	}
	return r.Record, r.Err
}

// Lookup implements Store, directly.
func (g *GroupStore) Lookup(ctx context.Context, keys []string) (map[string]Record, error) {
	return g.store.Lookup(ctx, keys)
}

// ClaimMany implements BatchStore, directly.
func (g *GroupStore) ClaimMany(ctx context.Context, reqs []ClaimRequest) ([]Claim, error) {
	return g.store.ClaimMany(ctx, reqs)
}

// TransitionMany implements BatchStore, directly.
func (g *GroupStore) TransitionMany(ctx context.Context, cs []Change) ([]TransitionResult, error) {
	return g.store.TransitionMany(ctx, cs)
}

// LastRefusals implements RefusalLookup when the underlying store does;
// otherwise it remembers no refusal.
func (g *GroupStore) LastRefusals(ctx context.Context, keys []string, since time.Time) (map[string]Record, error) {
	if rl, ok := g.store.(RefusalLookup); ok {
		return rl.LastRefusals(ctx, keys, since)
	}
	return map[string]Record{}, nil
}

// Unwrap returns the underlying store (for its Operator, say).
func (g *GroupStore) Unwrap() BatchStore { return g.store }

// Close sends the groups being gathered now, without waiting for their
// window; claims and changes made afterwards go to the store one by one.
// Runs in flight are not interrupted.
func (g *GroupStore) Close() {
	g.claims.Close()
	g.changes.Close()
}
