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

func isInvalid(err error) bool { return errors.Is(err, idempotency.ErrInvalidTransition) }

// concurrently runs fn n times at once and fails on any error.
func concurrently(t *testing.T, n int, fn func() error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

var claimCases = []testCase{
	{"FirstClaimInsertsARecord", func(t *testing.T, b *bundle) {
		key := newKey()
		rec := plainClaim(t, b, key)
		now := b.clock.Now()
		if rec.State != idempotency.StateCalling || rec.Claims != 1 || rec.Generation != 1 || rec.Token == 0 || rec.PrevState != "" {
			t.Fatalf("new claim: want calling, claims 1, generation 1, a token; got %+v", rec)
		}
		if string(rec.Fingerprint) != "fp-1" || rec.Namespace != "storetest" {
			t.Fatalf("new claim lost its fingerprint or namespace: %+v", rec)
		}
		if !rec.LeaseUntil.Equal(now.Add(lease)) || !rec.DedupUntil.Equal(now.Add(window)) || !rec.FirstClaimedAt.Equal(now) || !rec.UpdatedAt.Equal(now) {
			t.Fatalf("new claim: lease, dedup deadline and times from now (%v): %+v", now, rec)
		}
		if len(rec.Evidence) != 0 || !rec.DueAt.IsZero() {
			t.Fatalf("new claim: no evidence, no due time: %+v", rec)
		}
	}},
	{"ClaimWithoutWindowHasNoDeadline", func(t *testing.T, b *bundle) {
		r := req(newKey())
		r.Window = 0
		if rec := b.acquire(t, r); !rec.DedupUntil.IsZero() {
			t.Fatalf("an unlimited window stores no deadline: %+v", rec)
		}
	}},
	{"ConcurrentClaimsOnOneKeyExactlyOneWins", func(t *testing.T, b *bundle) {
		key := newKey()
		var wins atomic.Int32
		concurrently(t, 32, func() error {
			c, err := b.store.Claim(b.ctx, req(key))
			if err != nil {
				return err
			}
			if c.Record.Key != key {
				return fmt.Errorf("claim returned the record of %q", c.Record.Key)
			}
			if c.Verdict.Holds() {
				wins.Add(1)
			} else if c.Verdict != idempotency.VerdictInFlight {
				return fmt.Errorf("a losing claim must be in flight, got %v", c.Verdict)
			}
			return nil
		})
		if got := wins.Load(); got != 1 {
			t.Fatalf("32 goroutines claimed one key: want exactly 1 winner, got %d", got)
		}
	}},
	{"ConcurrentTakeoversOfAnExpiredClaimExactlyOneWins", func(t *testing.T, b *bundle) {
		key := newKey()
		first := plainClaim(t, b, key)
		b.clock.Advance(lease + time.Second)
		var wins atomic.Int32
		var token atomic.Int64
		concurrently(t, 16, func() error {
			r := req(key)
			r.TakeOver = true
			c, err := b.store.Claim(b.ctx, r)
			if err != nil {
				return err
			}
			if c.Verdict.Holds() {
				wins.Add(1)
				token.Store(c.Record.Token)
			}
			return nil
		})
		if wins.Load() != 1 || token.Load() == first.Token {
			t.Fatalf("16 takeovers of one expired claim: want exactly 1 winner with a new token, got %d", wins.Load())
		}
	}},
	{"NilFingerprintMatchesOnlyNil", func(t *testing.T, b *bundle) {
		key := newKey()
		r := req(key)
		r.Fingerprint, r.TakeOver = nil, true
		first := b.acquire(t, r)
		if len(first.Fingerprint) != 0 {
			t.Fatalf("nil fingerprint stored as %q", first.Fingerprint)
		}
		b.clock.Advance(lease + time.Second)
		fp := req(key)
		fp.TakeOver = true
		if c := b.claim(t, fp); c.Verdict != idempotency.VerdictMismatch {
			t.Fatalf("a fingerprinted request meeting an unfingerprinted record is a mismatch: %v", c.Verdict)
		}
		r.Fingerprint = []byte{}
		if c := b.claim(t, r); !c.Verdict.Holds() {
			t.Fatalf("an empty fingerprint is no fingerprint and takes over its own expired claim: %v", c.Verdict)
		}
	}},
	{"FailedRecordIsExempt", func(t *testing.T, b *bundle) {
		key := newKey()
		first := plainClaim(t, b, key)
		failed := b.change(t, idempotency.Fail(key, first.Token, "card_declined"))
		if failed.State != idempotency.StateFailed || failed.Reason != "card_declined" {
			t.Fatalf("failed record: %+v", failed)
		}
		if _, ok := b.lookup(t, key); ok {
			t.Fatal("Lookup must not return failed records")
		}
		second := plainClaim(t, b, key)
		if second.Token == first.Token || second.Claims != 1 {
			t.Fatalf("a failed record must not block a fresh claim: %+v", second)
		}
	}},
	{"LookupReturnsActiveRecordsInOneCall", func(t *testing.T, b *bundle) {
		applied, pending, failed, missing := newKey(), newKey(), newKey(), newKey()
		a := plainClaim(t, b, applied)
		b.complete(t, applied, a.Token, `"a"`)
		plainClaim(t, b, pending)
		f := plainClaim(t, b, failed)
		b.change(t, idempotency.Fail(failed, f.Token, "no"))
		got, err := b.store.Lookup(b.ctx, []string{applied, pending, failed, missing, applied})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[applied].State != idempotency.StateApplied || string(got[applied].Result) != `"a"` || got[pending].State != idempotency.StateCalling {
			t.Fatalf("Lookup: want applied and pending only, got %v", got)
		}
		if empty, err := b.store.Lookup(b.ctx, nil); err != nil || len(empty) != 0 {
			t.Fatalf("Lookup(nil): %v %v", empty, err)
		}
	}},
	{"NilResultIsStoredAsEmpty", func(t *testing.T, b *bundle) {
		// A codec may encode a result as nothing: the effect did happen, so
		// the record is applied, with an empty result, in every store.
		key := newKey()
		rec := plainClaim(t, b, key)
		c := idempotency.Change{Key: key, Token: rec.Token, To: idempotency.StateApplied, By: idempotency.ByHolder}
		done := b.change(t, c)
		got, ok := b.lookup(t, key)
		if done.State != idempotency.StateApplied || !ok || got.State != idempotency.StateApplied || got.Result == nil || len(got.Result) != 0 {
			t.Fatalf("an applied record with no result bytes: want applied with an empty, non-nil result; got %+v / %+v", done, got)
		}
	}},
	{"EvidenceIsAppendedInOrderAndBounded", func(t *testing.T, b *bundle) {
		key := newKey()
		var sent []idempotency.Attempt
		attempts := func(n int, class idempotency.AttemptClass) []idempotency.Attempt {
			out := make([]idempotency.Attempt, n)
			for i := range out {
				k := len(sent) + i + 1
				out[i] = idempotency.Attempt{At: b.clock.Now().Add(time.Duration(k) * time.Second), Generation: 1, Class: class,
					Status: 500 + k, RequestID: fmt.Sprintf("req_%d", k), Replayed: k%2 == 0, Error: fmt.Sprintf("attempt %d", k)}
			}
			sent = append(sent, out...)
			return out
		}
		rec := plainClaim(t, b, key)
		c := idempotency.Release(key, rec.Token, "429", 0)
		c.Evidence = attempts(4, idempotency.AttemptNotActed)
		b.change(t, c)
		rec = plainClaim(t, b, key)
		r := req(key)
		r.TakeOver = true
		c = idempotency.ReleaseUnknown(key, rec.Token, "503", 0, true)
		c.Evidence = attempts(4, idempotency.AttemptUnknown)
		b.change(t, c)
		rec = b.acquire(t, r)
		c = idempotency.Complete(key, rec.Token, []byte(`"ok"`))
		c.Evidence = attempts(4, idempotency.AttemptDone)
		done := b.change(t, c)
		got, _ := b.lookup(t, key)
		want := sent[len(sent)-idempotency.MaxEvidence:]
		for _, have := range [][]idempotency.Attempt{done.Evidence, got.Evidence} {
			if len(have) != idempotency.MaxEvidence {
				t.Fatalf("12 attempts: want the last %d kept, got %d", idempotency.MaxEvidence, len(have))
			}
			for i := range want {
				if !have[i].At.Equal(want[i].At) || have[i].Class != want[i].Class || have[i].Status != want[i].Status ||
					have[i].RequestID != want[i].RequestID || have[i].Replayed != want[i].Replayed || have[i].Error != want[i].Error ||
					have[i].Generation != want[i].Generation {
					t.Fatalf("evidence %d: want %+v, got %+v", i, want[i], have[i])
				}
			}
		}
	}},
	{"UnknownAttemptStillRunningKeepsTheLease", func(t *testing.T, b *bundle) {
		key := newKey()
		rec := plainClaim(t, b, key)
		left := b.change(t, idempotency.ReleaseUnknown(key, rec.Token, "timeout", 0, false))
		if !left.LeaseUntil.Equal(rec.LeaseUntil) {
			t.Fatalf("an attempt that may still run keeps its lease as the bound a reconciliation waits for: %+v", left)
		}
	}},
	{"RefusalLookupReturnsTheLastRefusalSince", func(t *testing.T, b *bundle) {
		rl, ok := b.store.(idempotency.RefusalLookup)
		if !ok {
			t.Skip("the store does not implement idempotency.RefusalLookup")
		}
		refused, old, applied, never := newKey(), newKey(), newKey(), newKey()
		o := plainClaim(t, b, old)
		b.change(t, idempotency.Fail(old, o.Token, "declined long ago"))
		b.clock.Advance(time.Hour)
		since := b.clock.Now()
		for _, reason := range []string{"first refusal", "second refusal"} {
			r := plainClaim(t, b, refused)
			b.change(t, idempotency.Fail(refused, r.Token, reason))
			b.clock.Advance(time.Second)
		}
		a := plainClaim(t, b, applied)
		b.complete(t, applied, a.Token, `"ok"`)
		got, err := rl.LastRefusals(b.ctx, []string{refused, old, applied, never}, since)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[refused].Reason != "second refusal" || string(got[refused].Fingerprint) != "fp-1" {
			t.Fatalf("LastRefusals: want the latest refusal of the one key refused since, with its fingerprint; got %+v", got)
		}
		if none, err := rl.LastRefusals(b.ctx, nil, since); err != nil || len(none) != 0 {
			t.Fatalf("LastRefusals(nil): %v %v", none, err)
		}
	}},
	{"CancelledContextIsAnError", func(t *testing.T, b *bundle) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		key := newKey()
		if _, err := b.store.Claim(ctx, req(key)); err == nil {
			t.Fatal("Claim with a cancelled context must fail")
		}
		if _, ok := b.lookup(t, key); ok {
			t.Fatal("a cancelled Claim must write nothing")
		}
	}},
}
