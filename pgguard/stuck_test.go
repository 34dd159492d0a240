package pgguard_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
)

// TestCountStuckAgreesWithListStuck: the one-query count per namespace is
// exactly what ListStuck lists, grouped.
func TestCountStuckAgreesWithListStuck(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	claim := func(ns, key string) idempotency.Record {
		c, err := b.store.Claim(b.ctx, idempotency.ClaimRequest{Key: key, Namespace: ns, Lease: time.Minute, Window: time.Hour})
		require.NoError(t, err)
		require.True(t, c.Verdict.Holds())
		return c.Record
	}
	for i := range 3 { // in doubt
		r := claim("a", fmt.Sprintf("a:doubt%d", i))
		_, err := b.store.Transition(b.ctx, idempotency.Park(r.Key, r.Token, "replayed 500", true))
		require.NoError(t, err)
	}
	claim("b", "b:expired") // held past its lease, below
	r := claim("b", "b:unknown")
	_, err := b.store.Transition(b.ctx, idempotency.ReleaseUnknown(r.Key, r.Token, "503", 0, true))
	require.NoError(t, err)
	b.clock.Advance(2 * time.Minute)
	claim("a", "a:live") // not stuck
	claim("c", "c:live") // not stuck
	counts, err := b.store.CountStuck(b.ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]int{"a": 3, "b": 1}, counts, "the unknown record is inside its window")

	b.clock.Advance(time.Hour) // now past the window
	counts, err = b.store.CountStuck(b.ctx)
	require.NoError(t, err)
	listed, err := b.store.ListStuck(b.ctx, idempotency.ListStuckRequest{Limit: 1000})
	require.NoError(t, err)
	grouped := map[string]int{}
	for _, rec := range listed {
		grouped[rec.Namespace]++
	}
	require.Equal(t, grouped, counts)
	require.Equal(t, map[string]int{"a": 4, "b": 2, "c": 1}, counts)
}
