package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

func withHook(c idempotency.Change, hook func(context.Context) error) idempotency.Change {
	c.Hook = hook
	return c
}

var hookCases = []testCase{
	{"HookRunsWithTheChangeAndItsFailureWritesNothing", func(t *testing.T, b *bundle) {
		boom := errors.New("domain insert failed")
		for name, mk := range map[string]func(key string, token int64) idempotency.Change{
			"complete": func(k string, tok int64) idempotency.Change { return idempotency.Complete(k, tok, []byte(`1`)) },
			"fail":     func(k string, tok int64) idempotency.Change { return idempotency.Fail(k, tok, "refused") },
		} {
			key := newKey()
			rec := plainClaim(t, b, key)
			_, err := b.store.Transition(b.ctx, withHook(mk(key, rec.Token), func(context.Context) error { return boom }))
			if !errors.Is(err, boom) {
				t.Fatalf("%s: the hook's error must come back, got %v", name, err)
			}
			if cur, ok := b.lookup(t, key); !ok || cur.State != idempotency.StateCalling || cur.Result != nil || cur.Token != rec.Token {
				t.Fatalf("%s: a failed hook must leave the claim held and unchanged: %+v", name, cur)
			}
			var ran bool
			got, err := b.store.Transition(b.ctx, withHook(mk(key, rec.Token), func(context.Context) error { ran = true; return nil }))
			if err != nil || !ran || got.State == idempotency.StateCalling {
				t.Fatalf("%s with a hook: ran=%v %+v %v", name, ran, got, err)
			}
		}
	}},
	{"HookMayReadTheStore", func(t *testing.T, b *bundle) {
		// A hook runs while its change is being written; it may look at the
		// ledger (another key, or its own) without deadlocking the store.
		key, other := newKey(), newKey()
		o := plainClaim(t, b, other)
		b.complete(t, other, o.Token, `"other"`)
		rec := plainClaim(t, b, key)
		var seen idempotency.Record
		_, err := b.store.Transition(b.ctx, withHook(idempotency.Complete(key, rec.Token, []byte(`"mine"`)), func(ctx context.Context) error {
			m, err := b.store.Lookup(ctx, []string{other, key})
			seen = m[other]
			return err
		}))
		if err != nil || seen.State != idempotency.StateApplied {
			t.Fatalf("a hook that reads the store: %v, saw %+v", err, seen)
		}
	}},
	{"RecoverWritesWhenNoLiveClaimHoldsTheKey", func(t *testing.T, b *bundle) {
		// A's lease expires while its call runs; B takes over and dies too.
		// A's call succeeds: its completion is refused, its recovery
		// records the success over B's expired claim.
		key := newKey()
		a := plainClaim(t, b, key)
		b.clock.Advance(lease + time.Second)
		r := req(key)
		r.TakeOver = true
		bee := b.acquire(t, r)
		_, err := b.store.Transition(b.ctx, idempotency.Complete(key, a.Token, []byte(`"A"`)))
		mustBeLost(t, "A's late completion", err)

		got, err := b.store.Transition(b.ctx, idempotency.Recover(key, a.Token, "storetest", []byte("fp-1"), []byte(`"A"`)))
		if !errors.Is(err, idempotency.ErrClaimLive) || got.Token != bee.Token {
			t.Fatalf("recovery while B's claim is live: want ErrClaimLive and B's record, got %v %+v", err, got)
		}
		b.clock.Advance(lease + time.Second)
		var ran bool
		got = b.change(t, withHook(idempotency.Recover(key, a.Token, "storetest", []byte("fp-1"), []byte(`"A"`)),
			func(context.Context) error { ran = true; return nil }))
		if !ran || got.State != idempotency.StateApplied || string(got.Result) != `"A"` || got.Token == bee.Token || got.Token == a.Token {
			t.Fatalf("recovery past B's lease: want applied with A's result under a new token, the hook run; got ran=%v %+v", ran, got)
		}
		if _, err := b.store.Transition(b.ctx, idempotency.Complete(key, bee.Token, []byte(`"B"`))); !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("B's late completion after the recovery: want ErrClaimLost, got %v", err)
		}
	}},
	{"RecoverCreatesARecordWhenTheOldOneFailed", func(t *testing.T, b *bundle) {
		key := newKey()
		a := plainClaim(t, b, key)
		b.clock.Advance(lease + time.Second)
		r := req(key)
		r.TakeOver = true
		bee := b.acquire(t, r)
		b.change(t, idempotency.Fail(key, bee.Token, "refused"))
		got := b.change(t, idempotency.Recover(key, a.Token, "storetest", []byte("fp-1"), []byte(`"A"`)))
		cur, ok := b.lookup(t, key)
		if got.State != idempotency.StateApplied || !ok || cur.State != idempotency.StateApplied || string(cur.Result) != `"A"` ||
			cur.Namespace != "storetest" || string(cur.Fingerprint) != "fp-1" {
			t.Fatalf("recovery after the key's record failed: want a new applied record with A's result; got %+v / %+v", got, cur)
		}
	}},
	{"RecoverNeverOverwritesAFinishedOrForeignRecord", func(t *testing.T, b *bundle) {
		key := newKey()
		a := plainClaim(t, b, key)
		b.clock.Advance(lease + time.Second)
		r := req(key)
		r.TakeOver = true
		bee := b.acquire(t, r)
		b.complete(t, key, bee.Token, `"B"`)
		got, err := b.store.Transition(b.ctx, idempotency.Recover(key, a.Token, "storetest", []byte("fp-1"), []byte(`"A"`)))
		if !errors.Is(err, idempotency.ErrClaimLost) || got.State != idempotency.StateApplied || string(got.Result) != `"B"` {
			t.Fatalf("recovery over an applied record: want ErrClaimLost and the record as it is; got %v %+v", err, got)
		}

		other := newKey()
		a = plainClaim(t, b, other)
		b.clock.Advance(lease + time.Second)
		bee = b.acquire(t, r2(other, true))
		b.change(t, idempotency.Fail(other, bee.Token, "refused"))
		c := req(other)
		c.Fingerprint = []byte("fp-2")
		third := b.acquire(t, c)
		b.change(t, idempotency.Release(other, third.Token, "429", 0))
		got, err = b.store.Transition(b.ctx, idempotency.Recover(other, a.Token, "storetest", []byte("fp-1"), []byte(`"A"`)))
		if !errors.Is(err, idempotency.ErrClaimLost) || string(got.Fingerprint) != "fp-2" || got.State != idempotency.StateReleased {
			t.Fatalf("recovery over another payload's record: want ErrClaimLost and that record untouched; got %v %+v", err, got)
		}
	}},
}

func r2(key string, takeOver bool) idempotency.ClaimRequest {
	r := req(key)
	r.TakeOver = takeOver
	return r
}
