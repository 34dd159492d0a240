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
// so the suite can expire leases with a fake clock instead of sleeping.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

// Factory returns a new, empty store whose clock is now.
type Factory func(t *testing.T, now func() time.Time) idempotency.Store

// Clock is a fake clock safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock stopped at a fixed instant.
func NewClock() *Clock {
	return &Clock{t: time.Date(2026, 3, 14, 9, 0, 0, 0, time.UTC)}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const lease = time.Minute

type bundle struct {
	store idempotency.Store
	clock *Clock
	ctx   context.Context
}

func setup(t *testing.T, f Factory) *bundle {
	t.Helper()
	clock := NewClock()
	s := f(t, clock.Now)
	if s == nil {
		t.Fatal("storetest: factory returned a nil store")
	}
	return &bundle{store: s, clock: clock, ctx: context.Background()}
}

var keySeq atomic.Int64

func newKey() string { return fmt.Sprintf("storetest:v1:k#%d", keySeq.Add(1)) }

func req(key string) idempotency.ClaimRequest {
	return idempotency.ClaimRequest{Key: key, Namespace: "storetest", Fingerprint: []byte("fp-1"), Lease: lease}
}

func mustClaim(t *testing.T, b *bundle, r idempotency.ClaimRequest) idempotency.Claim {
	t.Helper()
	c, err := b.store.Claim(b.ctx, r)
	if err != nil {
		t.Fatalf("Claim(%s): %v", r.Key, err)
	}
	return c
}

func mustAcquire(t *testing.T, b *bundle, r idempotency.ClaimRequest) idempotency.Record {
	t.Helper()
	c := mustClaim(t, b, r)
	if !c.Acquired {
		t.Fatalf("Claim(%s) did not acquire a free key: %+v", r.Key, c)
	}
	return c.Record
}

func mustComplete(t *testing.T, b *bundle, key string, token int64, result string) idempotency.Record {
	t.Helper()
	rec, err := b.store.Complete(b.ctx, idempotency.CompleteRequest{Key: key, Token: token, Status: idempotency.StatusApplied, Result: []byte(result)})
	if err != nil {
		t.Fatalf("Complete(%s): %v", key, err)
	}
	return rec
}

func lookupOne(t *testing.T, b *bundle, key string) (idempotency.Record, bool) {
	t.Helper()
	m, err := b.store.Lookup(b.ctx, []string{key})
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	r, ok := m[key]
	return r, ok
}

// Run runs every conformance subtest against stores made by f. Subtests run
// in parallel, each with a fresh store and its own fake clock.
func Run(t *testing.T, f Factory) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, setup(t, f))
		})
	}
}

var cases = []struct {
	name string
	fn   func(t *testing.T, b *bundle)
}{
	{"FirstClaimInsertsPendingRecord", func(t *testing.T, b *bundle) {
		key := newKey()
		rec := mustAcquire(t, b, req(key))
		if rec.Status != idempotency.StatusPending || rec.Attempts != 1 || rec.Token == 0 {
			t.Fatalf("new claim: want pending, attempts 1, a token; got %+v", rec)
		}
		if string(rec.Fingerprint) != "fp-1" || rec.Namespace != "storetest" {
			t.Fatalf("new claim lost its fingerprint or namespace: %+v", rec)
		}
		if !rec.LeaseUntil.Equal(b.clock.Now().Add(lease)) {
			t.Fatalf("lease: want %v, got %v", b.clock.Now().Add(lease), rec.LeaseUntil)
		}
	}},
	{"SecondClaimUnderLiveLeaseIsInFlight", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		b.clock.Advance(lease - time.Second)
		c := mustClaim(t, b, idempotency.ClaimRequest{Key: key, Namespace: "storetest", Fingerprint: []byte("fp-1"), Lease: lease, TakeOver: true})
		if c.Acquired || c.Stuck {
			t.Fatalf("claim under a live lease must be in flight, got acquired=%v stuck=%v", c.Acquired, c.Stuck)
		}
		if c.Record.Token != first.Token || c.Record.Status != idempotency.StatusPending {
			t.Fatalf("in-flight claim must return the holder's record, got %+v", c.Record)
		}
	}},
	{"ConcurrentClaimsOnOneKeyExactlyOneWins", func(t *testing.T, b *bundle) {
		key := newKey()
		const n = 32
		var wins atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := b.store.Claim(b.ctx, req(key))
				if err != nil {
					errs <- err
					return
				}
				if c.Record.Key != key {
					errs <- fmt.Errorf("claim returned record for %q", c.Record.Key)
				}
				if c.Acquired {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("concurrent claim: %v", err)
		}
		if got := wins.Load(); got != 1 {
			t.Fatalf("%d goroutines claimed one key: want exactly 1 winner, got %d", n, got)
		}
	}},
	{"CompletedRecordIsReturnedWithResult", func(t *testing.T, b *bundle) {
		key := newKey()
		rec := mustAcquire(t, b, req(key))
		done := mustComplete(t, b, key, rec.Token, `{"id":"promo_1"}`)
		if done.Status != idempotency.StatusApplied || string(done.Result) != `{"id":"promo_1"}` || !done.LeaseUntil.IsZero() {
			t.Fatalf("completed record: %+v", done)
		}
		b.clock.Advance(10 * lease)
		c := mustClaim(t, b, idempotency.ClaimRequest{Key: key, Namespace: "storetest", Fingerprint: []byte("fp-1"), Lease: lease, TakeOver: true})
		if c.Acquired || c.Stuck || c.Record.Status != idempotency.StatusApplied || string(c.Record.Result) != `{"id":"promo_1"}` {
			t.Fatalf("claim of an applied key must return it untouched: %+v", c)
		}
	}},
	{"SkippedRecordBlocksTheKey", func(t *testing.T, b *bundle) {
		key := newKey()
		rec := mustAcquire(t, b, req(key))
		if _, err := b.store.Complete(b.ctx, idempotency.CompleteRequest{Key: key, Token: rec.Token, Status: idempotency.StatusSkipped, Result: []byte(`null`)}); err != nil {
			t.Fatal(err)
		}
		c := mustClaim(t, b, req(key))
		if c.Acquired || c.Record.Status != idempotency.StatusSkipped {
			t.Fatalf("skipped record must block the key: %+v", c)
		}
	}},
	{"ExpiredLeaseIsTakenOverWithNewToken", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		b.clock.Advance(lease + time.Second)
		r := req(key)
		r.TakeOver = true
		second := mustAcquire(t, b, r)
		if second.Token == first.Token || second.Attempts != 2 {
			t.Fatalf("takeover must issue a new token and count the attempt: first %+v, second %+v", first, second)
		}
		if !second.FirstClaimedAt.Equal(first.FirstClaimedAt) {
			t.Fatalf("takeover must keep the first-claimed time (dedup window): %v vs %v", second.FirstClaimedAt, first.FirstClaimedAt)
		}
	}},
	{"StaleTokenChangesNothing", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		b.clock.Advance(lease + time.Second)
		r := req(key)
		r.TakeOver = true
		second := mustAcquire(t, b, r)

		_, err := b.store.Complete(b.ctx, idempotency.CompleteRequest{Key: key, Token: first.Token, Status: idempotency.StatusApplied, Result: []byte(`"late"`)})
		if !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("Complete with a stale token: want ErrClaimLost, got %v", err)
		}
		if err := b.store.Release(b.ctx, idempotency.ReleaseRequest{Key: key, Token: first.Token}); !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("Release with a stale token: want ErrClaimLost, got %v", err)
		}
		if _, err := b.store.Fail(b.ctx, idempotency.FailRequest{Key: key, Token: first.Token, Reason: "late"}); !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("Fail with a stale token: want ErrClaimLost, got %v", err)
		}
		cur, ok := lookupOne(t, b, key)
		if !ok || cur.Status != idempotency.StatusPending || cur.Token != second.Token || cur.Result != nil || cur.LeaseUntil.IsZero() {
			t.Fatalf("stale calls changed the record: %+v", cur)
		}
		done := mustComplete(t, b, key, second.Token, `"ok"`)
		if string(done.Result) != `"ok"` {
			t.Fatalf("holder's completion: %+v", done)
		}
	}},
	{"UnknownTokenOnMissingKeyIsClaimLost", func(t *testing.T, b *bundle) {
		_, err := b.store.Complete(b.ctx, idempotency.CompleteRequest{Key: newKey(), Token: 42, Status: idempotency.StatusApplied, Result: []byte(`1`)})
		if !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("Complete of a key never claimed: want ErrClaimLost, got %v", err)
		}
	}},
	{"ExpiredLeaseWithoutTakeOverIsStuck", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		b.clock.Advance(lease + time.Second)
		c := mustClaim(t, b, req(key))
		if c.Acquired || !c.Stuck || c.Record.Token != first.Token {
			t.Fatalf("expired claim under ExpiredPark must be stuck, untouched: %+v", c)
		}
	}},
	{"ExpiredPastDedupWindowIsStuck", func(t *testing.T, b *bundle) {
		key := newKey()
		mustAcquire(t, b, req(key))
		b.clock.Advance(25 * time.Hour)
		r := req(key)
		r.TakeOver, r.Window = true, 24*time.Hour
		c := mustClaim(t, b, r)
		if c.Acquired || !c.Stuck {
			t.Fatalf("a claim older than the dedup window must not be taken over: %+v", c)
		}
		r.Window = 48 * time.Hour
		if c := mustClaim(t, b, r); !c.Acquired {
			t.Fatalf("inside the window the expired claim must be taken over: %+v", c)
		}
	}},
	{"ReleasedPastDedupWindowIsStuck", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		if err := b.store.Release(b.ctx, idempotency.ReleaseRequest{Key: key, Token: first.Token, Reason: "response lost"}); err != nil {
			t.Fatal(err)
		}
		b.clock.Advance(25 * time.Hour)
		r := req(key)
		r.TakeOver, r.Window = true, 24*time.Hour
		c := mustClaim(t, b, r)
		if c.Acquired || !c.Stuck {
			t.Fatalf("a released claim older than the dedup window must not be retried blindly: %+v", c)
		}
		listed, err := b.store.ListStuck(b.ctx, idempotency.ListStuckRequest{Namespace: "storetest", Limit: 1000, Window: 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if !containsKey(listed, key) {
			t.Fatalf("ListStuck with the window must list a released claim past it")
		}
		unlisted, err := b.store.ListStuck(b.ctx, idempotency.ListStuckRequest{Namespace: "storetest", Limit: 1000, Window: 48 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if containsKey(unlisted, key) {
			t.Fatalf("ListStuck must not list a released claim inside the window: it will be retried")
		}
		r.Window = 0
		if c := mustClaim(t, b, r); !c.Acquired {
			t.Fatalf("without a window the released claim is free: %+v", c)
		}
	}},
	{"TakeOverRequiresSameFingerprint", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		b.clock.Advance(lease + time.Second)
		r := req(key)
		r.TakeOver, r.Fingerprint = true, []byte("fp-2")
		c := mustClaim(t, b, r)
		if c.Acquired || c.Record.Token != first.Token || string(c.Record.Fingerprint) != "fp-1" {
			t.Fatalf("an expired claim must not be taken over with another payload: %+v", c)
		}
	}},
	{"OnlyUncalledTakesOverClaimsWhoseCallNeverStarted", func(t *testing.T, b *bundle) {
		called, uncalled := newKey(), newKey()
		c1 := mustAcquire(t, b, req(called))
		mustAcquire(t, b, req(uncalled))
		if err := b.store.MarkCalling(b.ctx, called, c1.Token+1000); !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("MarkCalling with a wrong token: want ErrClaimLost, got %v", err)
		}
		if err := b.store.MarkCalling(b.ctx, called, c1.Token); err != nil {
			t.Fatal(err)
		}
		if rec, _ := lookupOne(t, b, called); !rec.CallStarted {
			t.Fatalf("MarkCalling must set CallStarted: %+v", rec)
		}
		b.clock.Advance(lease + time.Second)
		r := req(called)
		r.TakeOver, r.OnlyUncalled = true, true
		if c := mustClaim(t, b, r); c.Acquired || !c.Stuck {
			t.Fatalf("a claim whose call started must not be taken over under OnlyUncalled: %+v", c)
		}
		r.Key = uncalled
		got := mustAcquire(t, b, r)
		if got.CallStarted || got.Attempts != 2 {
			t.Fatalf("takeover of an uncalled claim: %+v", got)
		}
		if err := b.store.MarkCalling(b.ctx, uncalled, got.Token); err != nil {
			t.Fatal(err)
		}
		if err := b.store.Release(b.ctx, idempotency.ReleaseRequest{Key: uncalled, Token: got.Token, Reason: "503"}); err != nil {
			t.Fatal(err)
		}
		if rec, _ := lookupOne(t, b, uncalled); rec.CallStarted {
			t.Fatalf("Release must clear CallStarted: %+v", rec)
		}
	}},
	{"ReleasedClaimIsClaimableAtOnce", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		if err := b.store.Release(b.ctx, idempotency.ReleaseRequest{Key: key, Token: first.Token, Reason: "503"}); err != nil {
			t.Fatal(err)
		}
		rec, ok := lookupOne(t, b, key)
		if !ok || rec.Status != idempotency.StatusPending || !rec.LeaseUntil.IsZero() {
			t.Fatalf("released record must stay pending with no lease (the key is kept): %+v", rec)
		}
		second := mustAcquire(t, b, req(key)) // no TakeOver needed, no time passed
		if second.Token == first.Token || second.Attempts != 2 {
			t.Fatalf("reclaim after release: %+v", second)
		}
	}},
	{"ParkedClaimIsStuckAndListed", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		if err := b.store.Release(b.ctx, idempotency.ReleaseRequest{Key: key, Token: first.Token, Park: true, Reason: "replayed 500"}); err != nil {
			t.Fatal(err)
		}
		r := req(key)
		r.TakeOver = true
		b.clock.Advance(10 * lease)
		c := mustClaim(t, b, r)
		if c.Acquired || !c.Stuck || !c.Record.Parked || c.Record.Reason != "replayed 500" {
			t.Fatalf("parked claim must be stuck whatever the policy: %+v", c)
		}
		stuck, err := b.store.ListStuck(b.ctx, idempotency.ListStuckRequest{Namespace: "storetest", Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if !containsKey(stuck, key) {
			t.Fatalf("ListStuck must list the parked record")
		}
	}},
	{"ListStuckListsExpiredNotLive", func(t *testing.T, b *bundle) {
		expired, live, done := newKey(), newKey(), newKey()
		mustAcquire(t, b, req(expired))
		d := mustAcquire(t, b, req(done))
		mustComplete(t, b, done, d.Token, `1`)
		b.clock.Advance(lease + time.Second)
		mustAcquire(t, b, req(live))
		stuck, err := b.store.ListStuck(b.ctx, idempotency.ListStuckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !containsKey(stuck, expired) || containsKey(stuck, live) || containsKey(stuck, done) {
			t.Fatalf("ListStuck: want only the expired claim, got %v", keys(stuck))
		}
		other, err := b.store.ListStuck(b.ctx, idempotency.ListStuckRequest{Namespace: "other-namespace"})
		if err != nil {
			t.Fatal(err)
		}
		if len(other) != 0 {
			t.Fatalf("ListStuck must filter by namespace, got %v", keys(other))
		}
	}},
	{"SettleResolvesStuckRecord", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		b.clock.Advance(lease + time.Second)
		if _, err := b.store.Settle(b.ctx, idempotency.SettleRequest{Key: key, Token: first.Token + 1000, Status: idempotency.StatusApplied, Result: []byte(`1`)}); !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("Settle with a wrong token: want ErrClaimLost, got %v", err)
		}
		rec, err := b.store.Settle(b.ctx, idempotency.SettleRequest{Key: key, Token: first.Token, Status: idempotency.StatusApplied, Result: []byte(`{"id":"found"}`), Reason: "checked provider"})
		if err != nil {
			t.Fatal(err)
		}
		if rec.Status != idempotency.StatusApplied || string(rec.Result) != `{"id":"found"}` {
			t.Fatalf("settled: %+v", rec)
		}
		c := mustClaim(t, b, req(key))
		if c.Acquired || c.Record.Status != idempotency.StatusApplied {
			t.Fatalf("settled record must block the key: %+v", c)
		}
	}},
	{"FailedRecordIsExempt", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		failed, err := b.store.Fail(b.ctx, idempotency.FailRequest{Key: key, Token: first.Token, Reason: "card_declined"})
		if err != nil {
			t.Fatal(err)
		}
		if failed.Status != idempotency.StatusFailed || failed.Reason != "card_declined" {
			t.Fatalf("failed record: %+v", failed)
		}
		if _, ok := lookupOne(t, b, key); ok {
			t.Fatal("Lookup must not return failed records")
		}
		second := mustAcquire(t, b, req(key))
		if second.Token == first.Token || second.Attempts != 1 {
			t.Fatalf("a failed record must not block a fresh claim: %+v", second)
		}
	}},
	{"RevokedRecordIsExempt", func(t *testing.T, b *bundle) {
		key := newKey()
		first := mustAcquire(t, b, req(key))
		mustComplete(t, b, key, first.Token, `"code-1"`)
		rev, err := b.store.Revoke(b.ctx, key, "subscription cancelled")
		if err != nil {
			t.Fatal(err)
		}
		if rev.Status != idempotency.StatusRevoked {
			t.Fatalf("revoked: %+v", rev)
		}
		if _, err := b.store.Revoke(b.ctx, key, "again"); !errors.Is(err, idempotency.ErrNotFound) {
			t.Fatalf("second Revoke: want ErrNotFound, got %v", err)
		}
		second := mustAcquire(t, b, req(key))
		mustComplete(t, b, key, second.Token, `"code-2"`)
		if rec, _ := lookupOne(t, b, key); string(rec.Result) != `"code-2"` {
			t.Fatalf("after revocation the new record is the active one: %+v", rec)
		}
	}},
	{"RevokeRefusesPendingAndMissing", func(t *testing.T, b *bundle) {
		key := newKey()
		mustAcquire(t, b, req(key))
		if _, err := b.store.Revoke(b.ctx, key, "x"); !errors.Is(err, idempotency.ErrNotFound) {
			t.Fatalf("Revoke of a pending record: want ErrNotFound, got %v", err)
		}
		if _, err := b.store.Revoke(b.ctx, newKey(), "x"); !errors.Is(err, idempotency.ErrNotFound) {
			t.Fatalf("Revoke of a missing record: want ErrNotFound, got %v", err)
		}
	}},
	{"LookupReturnsActiveRecordsInOneCall", func(t *testing.T, b *bundle) {
		applied, pending, failed, missing := newKey(), newKey(), newKey(), newKey()
		a := mustAcquire(t, b, req(applied))
		mustComplete(t, b, applied, a.Token, `"a"`)
		mustAcquire(t, b, req(pending))
		f := mustAcquire(t, b, req(failed))
		if _, err := b.store.Fail(b.ctx, idempotency.FailRequest{Key: failed, Token: f.Token}); err != nil {
			t.Fatal(err)
		}
		got, err := b.store.Lookup(b.ctx, []string{applied, pending, failed, missing, applied})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[applied].Status != idempotency.StatusApplied || string(got[applied].Result) != `"a"` || got[pending].Status != idempotency.StatusPending {
			t.Fatalf("Lookup: want applied and pending only, got %v", got)
		}
		if empty, err := b.store.Lookup(b.ctx, nil); err != nil || len(empty) != 0 {
			t.Fatalf("Lookup(nil): %v %v", empty, err)
		}
	}},
	{"NilFingerprintMatchesOnlyNil", func(t *testing.T, b *bundle) {
		key := newKey()
		r := req(key)
		r.Fingerprint = nil
		first := mustAcquire(t, b, r)
		if len(first.Fingerprint) != 0 {
			t.Fatalf("nil fingerprint stored as %q", first.Fingerprint)
		}
		b.clock.Advance(lease + time.Second)
		r2 := req(key)
		r2.TakeOver = true
		if c := mustClaim(t, b, r2); c.Acquired {
			t.Fatalf("a fingerprinted request must not take over an unfingerprinted claim")
		}
		r.TakeOver = true
		if c := mustClaim(t, b, r); !c.Acquired {
			t.Fatalf("an unfingerprinted request must take over its own expired claim: %+v", c)
		}
	}},
	{"HookRunsWithCompletionAndFailureWritesNothing", func(t *testing.T, b *bundle) {
		key := newKey()
		rec := mustAcquire(t, b, req(key))
		boom := errors.New("domain insert failed")
		_, err := b.store.Complete(b.ctx, idempotency.CompleteRequest{Key: key, Token: rec.Token, Status: idempotency.StatusApplied, Result: []byte(`1`),
			Hook: func(context.Context, any) error { return boom }})
		if !errors.Is(err, boom) {
			t.Fatalf("Complete must return the hook's error, got %v", err)
		}
		cur, _ := lookupOne(t, b, key)
		if cur.Status != idempotency.StatusPending || cur.Result != nil || cur.Token != rec.Token {
			t.Fatalf("a failed hook must leave the claim pending and held: %+v", cur)
		}
		var ran bool
		if _, err := b.store.Complete(b.ctx, idempotency.CompleteRequest{Key: key, Token: rec.Token, Status: idempotency.StatusApplied, Result: []byte(`2`),
			Hook: func(context.Context, any) error { ran = true; return nil }}); err != nil {
			t.Fatal(err)
		}
		if !ran {
			t.Fatal("hook did not run")
		}
	}},
	{"FailHookRunsWithTheFailureAndItsErrorWritesNothing", func(t *testing.T, b *bundle) {
		key := newKey()
		rec := mustAcquire(t, b, req(key))
		boom := errors.New("domain insert failed")
		_, err := b.store.Fail(b.ctx, idempotency.FailRequest{Key: key, Token: rec.Token, Reason: "card_declined",
			Hook: func(context.Context, any) error { return boom }})
		if !errors.Is(err, boom) {
			t.Fatalf("Fail must return the hook's error, got %v", err)
		}
		if cur, ok := lookupOne(t, b, key); !ok || cur.Status != idempotency.StatusPending || cur.Token != rec.Token {
			t.Fatalf("a failed hook must leave the claim pending and held: %+v", cur)
		}
		var ran bool
		failed, err := b.store.Fail(b.ctx, idempotency.FailRequest{Key: key, Token: rec.Token, Reason: "card_declined",
			Hook: func(context.Context, any) error { ran = true; return nil }})
		if err != nil || !ran || failed.Status != idempotency.StatusFailed {
			t.Fatalf("Fail with a hook: ran=%v %+v %v", ran, failed, err)
		}
		if _, ok := lookupOne(t, b, key); ok {
			t.Fatal("the failed record must free the key")
		}
	}},
	{"CancelledContextIsAnError", func(t *testing.T, b *bundle) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		key := newKey()
		if _, err := b.store.Claim(ctx, req(key)); err == nil {
			t.Fatal("Claim with a cancelled context must fail")
		}
		if _, ok := lookupOne(t, b, key); ok {
			t.Fatal("a cancelled Claim must write nothing")
		}
	}},
	{"ExecutorRunsOnceUnderConcurrency", func(t *testing.T, b *bundle) {
		x, err := idempotency.NewExecutor(b.store, nil)
		if err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int32
		ks := idempotency.KeySpace{Namespace: "storetest"}
		eff := &idempotency.Effect[string, string]{
			Name: "storetest.once",
			Key:  func(in string) (idempotency.Key, error) { return ks.Key(idempotency.Str("id", in)) },
			Call: func(ctx context.Context, k idempotency.Key, in string) (string, error) {
				calls.Add(1)
				return "result-" + in, nil
			},
		}
		id := newKey()
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = idempotency.Run(b.ctx, x, eff, id)
			}()
		}
		wg.Wait()
		res, err := idempotency.Run(b.ctx, x, eff, id)
		if err != nil {
			t.Fatal(err)
		}
		if calls.Load() != 1 || res.Outcome != idempotency.OutcomeAlreadyApplied || res.Value != "result-"+id {
			t.Fatalf("16 concurrent runs + 1: want 1 provider call and the stored result, got %d calls, %v %q", calls.Load(), res.Outcome, res.Value)
		}
	}},
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
