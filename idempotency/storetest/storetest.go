// Package storetest is the conformance suite every idempotency.Store must
// pass. A store's own tests call Run with a factory:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, now func() time.Time) idempotency.Store {
//			return mystore.New(freshDatabase(t), &mystore.Config{Now: now})
//		})
//	}
//
// The factory must return an empty store that reads time only from now,
// so the suite can expire leases, due times and windows with a fake clock
// (package clocktest) instead of sleeping.
//
// The suite is split by area: the claim rule, checked as one table of
// cases, state by request by verdict (verdicts.go); every row of the
// transition table, allowed and refused (transitions.go); claims under
// concurrency and their bookkeeping (claims.go); hooks and the recovery of
// a lost completion (hooks.go); the optional Operator (operator.go); the
// executor end to end on the store (executor.go); and the optional
// BatchStore, through the same verdict and transition tables and mixed
// batches (batch.go).
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
)

// Factory returns a new, empty store whose clock is now.
type Factory func(t *testing.T, now func() time.Time) idempotency.Store

const (
	lease  = time.Minute
	window = time.Hour
	later  = 10 * time.Minute // a due time in the future
)

type bundle struct {
	store idempotency.Store
	clock *clocktest.Clock
	ctx   context.Context
}

func setup(t *testing.T, f Factory) *bundle {
	t.Helper()
	clock := clocktest.New()
	s := f(t, clock.Now)
	if s == nil {
		t.Fatal("storetest: factory returned a nil store")
	}
	return &bundle{store: s, clock: clock, ctx: context.Background()}
}

var keySeq atomic.Int64

func newKey() string { return fmt.Sprintf("storetest:v1:k#%d", keySeq.Add(1)) }

// req is the plain request: no takeover, no tracking, no Find, the suite's
// window.
func req(key string) idempotency.ClaimRequest {
	return idempotency.ClaimRequest{Key: key, Namespace: "storetest", Fingerprint: []byte("fp-1"), Lease: lease, Window: window}
}

func (b *bundle) claim(t *testing.T, r idempotency.ClaimRequest) idempotency.Claim {
	t.Helper()
	c, err := b.store.Claim(b.ctx, r)
	if err != nil {
		t.Fatalf("Claim(%s): %v", r.Key, err)
	}
	return c
}

func (b *bundle) acquire(t *testing.T, r idempotency.ClaimRequest) idempotency.Record {
	t.Helper()
	c := b.claim(t, r)
	if !c.Verdict.Holds() {
		t.Fatalf("Claim(%s) did not acquire: verdict %v, record %+v", r.Key, c.Verdict, c.Record)
	}
	return c.Record
}

func (b *bundle) change(t *testing.T, c idempotency.Change) idempotency.Record {
	t.Helper()
	rec, err := b.store.Transition(b.ctx, c)
	if err != nil {
		t.Fatalf("Transition(%s to %q by %s): %v", c.Key, c.To, c.By, err)
	}
	return rec
}

func (b *bundle) complete(t *testing.T, key string, token int64, result string) idempotency.Record {
	t.Helper()
	return b.change(t, idempotency.Complete(key, token, []byte(result)))
}

func (b *bundle) lookup(t *testing.T, key string) (idempotency.Record, bool) {
	t.Helper()
	m, err := b.store.Lookup(b.ctx, []string{key})
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	r, ok := m[key]
	return r, ok
}

// mustBeLost checks that err is ErrClaimLost.
func mustBeLost(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, idempotency.ErrClaimLost) {
		t.Fatalf("%s: want ErrClaimLost, got %v", what, err)
	}
}

type testCase struct {
	name string
	fn   func(t *testing.T, b *bundle)
}

// Run runs every conformance subtest against stores made by f. Subtests run
// in parallel, each with a fresh store and its own fake clock.
func Run(t *testing.T, f Factory) {
	t.Helper()
	var all []testCase
	all = append(all, verdictCases...)
	all = append(all, transitionCases...)
	all = append(all, claimCases...)
	all = append(all, hookCases...)
	all = append(all, operatorCases...)
	all = append(all, executorCases...)
	all = append(all, batchCases...)
	for _, tc := range all {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, setup(t, f))
		})
	}
}

func containsKey(rs []idempotency.Record, key string) bool {
	for _, r := range rs {
		if r.Key == key {
			return true
		}
	}
	return false
}

func keys(rs []idempotency.Record) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Key
	}
	return out
}
