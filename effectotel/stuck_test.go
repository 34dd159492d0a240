package effectotel_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/effectonce/effectonce/effectotel"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
)

// seed puts a record for key in the store in the given condition, on the
// store's clock.
func seed(t *testing.T, s *idempotency.MemStore, ns, key, how string) idempotency.Record {
	t.Helper()
	ctx := context.Background()
	c, err := s.Claim(ctx, idempotency.ClaimRequest{Key: ns + ":" + key, Namespace: ns, Lease: time.Minute})
	require.NoError(t, err)
	require.Equal(t, idempotency.VerdictAcquired, c.Verdict)
	rec := c.Record
	switch how {
	case "in_doubt":
		rec, err = s.Transition(ctx, idempotency.Park(rec.Key, rec.Token, "timeout", true))
	case "applied":
		rec, err = s.Transition(ctx, idempotency.Complete(rec.Key, rec.Token, []byte(`"ok"`)))
	case "held":
		// Left held under its lease: stuck once the lease ends.
	default:
		t.Fatalf("seed: unknown condition %q", how)
	}
	require.NoError(t, err)
	return rec
}

func TestStuckGaugeReadsTheStuckRecordsOfEachNamespace(t *testing.T) {
	h := newHarness(t, nil)
	clock := clocktest.New()
	store := idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: clock.Now})
	reg, err := h.inst.ObserveStuck(store, "c")
	require.NoError(t, err)

	a1 := seed(t, store, "a", "1", "in_doubt")
	seed(t, store, "a", "2", "in_doubt")
	seed(t, store, "a", "3", "held")
	b1 := seed(t, store, "b", "1", "in_doubt")
	b2 := seed(t, store, "b", "2", "in_doubt")
	seed(t, store, "b", "3", "applied")
	stuck := func() map[string]int64 { return counts(t, h.collect(t), effectotel.MetricStuckRecords) }

	require.Equal(t, map[string]int64{"namespace=a": 2, "namespace=b": 2, "namespace=c": 0}, stuck(),
		"the held record's lease is live: not stuck yet; c is listed, so reported at 0")

	clock.Advance(2 * time.Minute)
	seed(t, store, "b", "4", "held") // a live claim, taken after the clock moved
	require.Equal(t, map[string]int64{"namespace=a": 3, "namespace=b": 2, "namespace=c": 0}, stuck(),
		"a claim held past its lease is stuck")

	ctx := context.Background()
	_, err = store.Settle(ctx, idempotency.SettleRequest{Key: a1.Key, Token: a1.Token, State: idempotency.StateFailed})
	require.NoError(t, err)
	for _, r := range []idempotency.Record{b1, b2} {
		_, err = store.Settle(ctx, idempotency.SettleRequest{Key: r.Key, Token: r.Token, State: idempotency.StateApplied, Result: []byte(`"found"`)})
		require.NoError(t, err)
	}
	require.Equal(t, map[string]int64{"namespace=a": 2, "namespace=b": 0, "namespace=c": 0}, stuck(),
		"b was seen stuck: it goes back to 0 instead of going silent")

	require.NoError(t, reg.Unregister())
	require.Empty(t, stuck())
}

// countingStore counts stuck records on its own and must not be listed.
type countingStore struct {
	counts map[string]int
	err    error
}

func (c *countingStore) CountStuck(context.Context) (map[string]int, error) { return c.counts, c.err }

func (c *countingStore) ListStuck(context.Context, idempotency.ListStuckRequest) ([]idempotency.Record, error) {
	return nil, errors.New("ListStuck called on a StuckCounter")
}

func TestStuckGaugePrefersAStoresOwnCount(t *testing.T) {
	h := newHarness(t, nil)
	store := &countingStore{counts: map[string]int{"a": 7, "b": 1}}
	_, err := h.inst.ObserveStuck(store)
	require.NoError(t, err)
	require.Equal(t, map[string]int64{"namespace=a": 7, "namespace=b": 1}, counts(t, h.collect(t), effectotel.MetricStuckRecords))
	delete(store.counts, "b")
	require.Equal(t, map[string]int64{"namespace=a": 7, "namespace=b": 0}, counts(t, h.collect(t), effectotel.MetricStuckRecords))
}

// listingStore returns n stuck records of namespace "a", up to the limit
// it is asked for, and remembers that limit.
type listingStore struct {
	n   int
	err error

	mu     sync.Mutex
	limits []int
}

func (l *listingStore) ListStuck(_ context.Context, req idempotency.ListStuckRequest) ([]idempotency.Record, error) {
	l.mu.Lock()
	l.limits = append(l.limits, req.Limit)
	l.mu.Unlock()
	if l.err != nil {
		return nil, l.err
	}
	var out []idempotency.Record
	for i := 0; i < l.n && i < req.Limit; i++ {
		out = append(out, idempotency.Record{Key: fmt.Sprintf("a:%d", i), Namespace: "a", State: idempotency.StateInDoubt})
	}
	return out, nil
}

func TestStuckGaugeListsAtMostStuckLimitRecords(t *testing.T) {
	for _, tc := range []struct {
		limit, want int
	}{{0, effectotel.DefaultStuckLimit}, {5, 5}} {
		t.Run(fmt.Sprint(tc.limit), func(t *testing.T) {
			h := newHarness(t, &effectotel.Config{StuckLimit: tc.limit})
			store := &listingStore{n: 12}
			_, err := h.inst.ObserveStuck(store)
			require.NoError(t, err)
			require.Equal(t, map[string]int64{"namespace=a": int64(min(12, tc.want))}, counts(t, h.collect(t), effectotel.MetricStuckRecords))
			require.Equal(t, []int{tc.want}, store.limits, "one ListStuck per collection, with the limit")
		})
	}
}

func TestStuckGaugeReportsNothingWhenTheStoreFails(t *testing.T) {
	h := newHarness(t, nil)
	boom := errors.New("connection refused")
	store := &listingStore{n: 2}
	_, err := h.inst.ObserveStuck(store, "a")
	require.NoError(t, err)
	require.Equal(t, map[string]int64{"namespace=a": 2}, counts(t, h.collect(t), effectotel.MetricStuckRecords))

	store.err = boom
	var rm metricdata.ResourceMetrics
	err = h.reader.Collect(context.Background(), &rm)
	require.ErrorIs(t, err, boom, "the SDK gets the store's error")
	require.Empty(t, counts(t, rm, effectotel.MetricStuckRecords), "no stale value is reported")
}

func TestObserveStuckRejectsANilStore(t *testing.T) {
	h := newHarness(t, nil)
	_, err := h.inst.ObserveStuck(nil)
	require.Error(t, err)
}
