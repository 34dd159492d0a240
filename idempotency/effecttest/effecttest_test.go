package effecttest_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
)

// recorder captures failures instead of failing the test, so these tests
// can show that effecttest fails on broken effects.
type recorder struct {
	*testing.T
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) joined() string { return strings.Join(r.errs, "\n") }

type transfer struct {
	ID     string
	Amount int64
}

// receiver is a fake provider; dedup selects whether it honours keys.
type receiver struct {
	mu      sync.Mutex
	dedup   bool
	seen    map[string]string
	effects int
}

func (p *receiver) call(_ context.Context, k idempotency.Key, in transfer) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dedup {
		if id, ok := p.seen[k.String()]; ok {
			return id, nil
		}
	}
	p.effects++
	id := fmt.Sprintf("tr_%d", p.effects)
	p.seen[k.String()] = id
	return id, nil
}

func (p *receiver) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.effects
}

var keys = idempotency.KeySpace{Namespace: "payouts.transfer"}

func goodEffect(p *receiver) *idempotency.Effect[transfer, string] {
	return &idempotency.Effect[transfer, string]{
		Name:        "payouts.transfer",
		Key:         func(in transfer) (idempotency.Key, error) { return keys.Key(idempotency.Str("transfer", in.ID)) },
		Fingerprint: func(in transfer) ([]byte, error) { return idempotency.FingerprintJSON(in.Amount) },
		Call:        p.call,
		Expired:     idempotency.ExpiredRetry,
	}
}

func inputs() []transfer {
	var out []transfer
	for i := range 6 {
		out = append(out, transfer{ID: fmt.Sprintf("t%d", i), Amount: int64(100 + i)})
	}
	return out
}

func memStore(now func() time.Time) idempotency.Store {
	return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now})
}

func check(t *testing.T, eff *idempotency.Effect[transfer, string], p *receiver) (*recorder, bool) {
	rec := &recorder{T: t}
	ok := effecttest.Run(rec, effecttest.Case[transfer, string]{
		Effect:   eff,
		Inputs:   inputs(),
		Mutate:   func(in transfer) transfer { in.Amount += 1000; return in },
		NewStore: memStore,
		Effects:  p.count,
	})
	return rec, ok
}

func newReceiver(dedup bool) *receiver { return &receiver{dedup: dedup, seen: map[string]string{}} }

func TestPassesACorrectEffect(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	rec, ok := check(t, goodEffect(p), p)
	require.True(t, ok, rec.joined())
	require.Empty(t, rec.errs)
	require.Equal(t, 6, p.count())
}

func TestPassesAParkingEffectOnANonDeduplicatingProvider(t *testing.T) {
	t.Parallel()
	p := newReceiver(false)
	eff := goodEffect(p)
	eff.Expired = idempotency.ExpiredRetryUncalled
	rec, ok := check(t, eff, p)
	require.True(t, ok, rec.joined())
}

func TestFailsAClockDerivedKey(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	eff := goodEffect(p)
	eff.Key = func(in transfer) (idempotency.Key, error) {
		return keys.Key(idempotency.Str("transfer", in.ID), idempotency.Int("bucket", time.Now().UnixNano()))
	}
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.joined(), "must depend only on business identity")
}

func TestFailsAKeyMissingTheBusinessIdentity(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	eff := goodEffect(p)
	eff.Key = func(in transfer) (idempotency.Key, error) { return keys.Key(idempotency.Str("kind", "transfer")) }
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.joined(), "have the same key")
}

func TestFailsAnEffectThatDoesNotSendTheKey(t *testing.T) {
	t.Parallel()
	// The provider deduplicates, but the call sends a fresh key each time,
	// as stripe-go does when none is set: the takeover after a crash
	// creates a second object.
	p := newReceiver(true)
	eff := goodEffect(p)
	var n int
	var mu sync.Mutex
	eff.Call = func(ctx context.Context, k idempotency.Key, in transfer) (string, error) {
		mu.Lock()
		n++
		fresh := keys.MustKey(idempotency.Str("random", fmt.Sprint(n)))
		mu.Unlock()
		return p.call(ctx, fresh, in)
	}
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.joined(), "crash after the provider call")
	require.Contains(t, rec.joined(), "exactly once")
}

func TestFailsAnEffectThatIgnoresTheClaim(t *testing.T) {
	t.Parallel()
	// An effect that calls the provider on its own in Key (a "pre-flight"
	// that writes), bypassing the claim.
	p := newReceiver(false)
	eff := goodEffect(p)
	eff.Key = func(in transfer) (idempotency.Key, error) {
		k, err := keys.Key(idempotency.Str("transfer", in.ID))
		if err == nil {
			_, _ = p.call(context.Background(), k, in)
		}
		return k, err
	}
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.joined(), "each intent must happen exactly once")
}

func TestFailsAFingerprintThatMissesThePayload(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	eff := goodEffect(p)
	eff.Fingerprint = func(in transfer) ([]byte, error) { return []byte(in.ID), nil }
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.joined(), "same fingerprint")
}

func TestRejectsTooFewInputs(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	rec := &recorder{T: t}
	ok := effecttest.Run(rec, effecttest.Case[transfer, string]{Effect: goodEffect(p), Inputs: inputs()[:2], NewStore: memStore, Effects: p.count})
	require.False(t, ok)
	require.Contains(t, rec.joined(), "at least 4")
}
