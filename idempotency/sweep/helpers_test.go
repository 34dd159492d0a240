package sweep_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

// promo is one candidate: an anniversary promotion code for a subscriber's
// milestone, worth Percent off.
type promo struct {
	User      string
	Sub       string
	Milestone int64
	Percent   int64
}

var promoKeys = idempotency.KeySpace{Namespace: "loyalty.promo"}

func promos(from, to int) []promo {
	out := make([]promo, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, promo{User: fmt.Sprintf("u_%d", i), Sub: fmt.Sprintf("sub_%d", i), Milestone: 12, Percent: 10})
	}
	return out
}

// provider is a fake provider that deduplicates by key, as Stripe does, and
// counts what it really created.
type provider struct {
	mu      sync.Mutex
	calls   int
	created map[string]string
	// before, when set, runs at the start of every call with the call's
	// number (from 1); a non-nil error fails the call.
	before func(ctx context.Context, n int, in promo) error
}

func newProvider() *provider { return &provider{created: map[string]string{}} }

func (p *provider) call(ctx context.Context, key idempotency.Key, in promo) (string, error) {
	p.mu.Lock()
	p.calls++
	n := p.calls
	before := p.before
	p.mu.Unlock()
	if before != nil {
		if err := before(ctx, n, in); err != nil {
			return "", err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if id, ok := p.created[key.String()]; ok {
		return id, nil
	}
	id := fmt.Sprintf("promo_%d", len(p.created)+1)
	p.created[key.String()] = id
	return id, nil
}

func (p *provider) stats() (calls, created int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, len(p.created)
}

func (p *provider) effect() *idempotency.Effect[promo, string] {
	return &idempotency.Effect[promo, string]{
		Name: "loyalty.promo",
		Key: func(in promo) (idempotency.Key, error) {
			return promoKeys.Key(idempotency.Str("user", in.User), idempotency.Str("sub", in.Sub), idempotency.Int("milestone", in.Milestone))
		},
		Fingerprint: func(in promo) ([]byte, error) { return idempotency.FingerprintJSON(in.Percent) },
		Call:        p.call,
	}
}

// dedupEffect is effect for a provider that deduplicates by key for a day,
// as Stripe does: an expired claim is retried under the same key
// (ExpiredRetry), so a sweep claims its batches without marking each call.
func (p *provider) dedupEffect() *idempotency.Effect[promo, string] {
	e := p.effect()
	e.Expired, e.DedupWindow = idempotency.ExpiredRetry, 24*time.Hour
	return e
}

// countingStore counts the calls a sweep makes to its store.
type countingStore struct {
	idempotency.Store
	lookups atomic.Int64
	claims  atomic.Int64
}

func (c *countingStore) Lookup(ctx context.Context, keys []string) (map[string]idempotency.Record, error) {
	c.lookups.Add(1)
	return c.Store.Lookup(ctx, keys)
}

func (c *countingStore) Claim(ctx context.Context, req idempotency.ClaimRequest) (idempotency.Claim, error) {
	c.claims.Add(1)
	return c.Store.Claim(ctx, req)
}

// countingBatchStore is countingStore over a batch store: claims counted
// one per request, batched or not.
type countingBatchStore struct {
	*countingStore
	bs idempotency.BatchStore
}

func (c *countingBatchStore) ClaimMany(ctx context.Context, reqs []idempotency.ClaimRequest) ([]idempotency.Claim, error) {
	c.claims.Add(int64(len(reqs)))
	return c.bs.ClaimMany(ctx, reqs)
}

func (c *countingBatchStore) TransitionMany(ctx context.Context, cs []idempotency.Change) ([]idempotency.TransitionResult, error) {
	return c.bs.TransitionMany(ctx, cs)
}

// counting returns a counting decorator over base that keeps base's batch
// capability, if it has one.
func counting(base idempotency.Store) (idempotency.Store, *countingStore) {
	c := &countingStore{Store: base}
	if bs, ok := base.(idempotency.BatchStore); ok {
		return &countingBatchStore{countingStore: c, bs: bs}, c
	}
	return c, c
}

func newExecutor(t testing.TB, s idempotency.Store) *idempotency.Executor {
	t.Helper()
	x, err := idempotency.NewExecutor(s, nil)
	require.NoError(t, err)
	return x
}

// sum returns the number of candidates a report accounts for.
func sum(r sweep.Report) int {
	n := r.Invalid + r.Unstarted
	for _, c := range r.Outcomes {
		n += c
	}
	return n
}

// requireAccounted checks the report's invariant: every candidate counted
// exactly once.
func requireAccounted(t *testing.T, r sweep.Report) {
	t.Helper()
	require.Equal(t, r.Candidates, sum(r), "every candidate counted exactly once: %s", r)
}

// requireAppliedOrReleased checks that no key of items is left pending under
// a live lease: each is absent, applied, or pending and released.
func requireAppliedOrReleased(t *testing.T, s idempotency.Store, eff *idempotency.Effect[promo, string], items []promo) (applied int) {
	t.Helper()
	keys := make([]string, 0, len(items))
	for _, in := range items {
		k, _, err := eff.Identity(in)
		require.NoError(t, err)
		keys = append(keys, k.String())
	}
	recs, err := s.Lookup(context.Background(), keys)
	require.NoError(t, err)
	for _, r := range recs {
		switch r.State {
		case idempotency.StateApplied:
			applied++
		case idempotency.StateReleased, idempotency.StateUnknown:
			require.True(t, r.LeaseUntil.IsZero() || r.State == idempotency.StateUnknown, "key %s released under a lease", r.Key)
		default:
			t.Fatalf("key %s: left %s (held, or in doubt)", r.Key, r.State)
		}
	}
	return applied
}
