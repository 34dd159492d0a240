package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

// operatorCase skips stores that do not implement idempotency.Operator.
func operatorCase(name string, fn func(t *testing.T, b *bundle, op idempotency.Operator)) testCase {
	return testCase{"Operator/" + name, func(t *testing.T, b *bundle) {
		op, ok := b.store.(idempotency.Operator)
		if !ok {
			t.Skip("the store does not implement idempotency.Operator")
		}
		fn(t, b, op)
	}}
}

var operatorCases = []testCase{
	operatorCase("ListStuckListsWhatNobodyWillFinish", func(t *testing.T, b *bundle, op idempotency.Operator) {
		stuck := map[string]seed{
			"in doubt":            seeds["in_doubt"],
			"calling expired":     seeds["calling-expired"],
			"claimed expired":     seeds["claimed-expired"],
			"unknown past window": seeds["unknown-past-window"],
		}
		fine := map[string]seed{
			"calling live": seeds["calling-live"],
			"released":     seeds["released"],
			"unknown":      seeds["unknown"],
			"applied":      seeds["applied"],
			"failed":       seeds["failed"],
		}
		want, unwanted := map[string]string{}, map[string]string{}
		for name, sd := range stuck {
			k := newKey()
			sd(t, b, k)
			want[k] = name
		}
		for name, sd := range fine {
			k := newKey()
			sd(t, b, k)
			unwanted[k] = name
		}
		list, err := op.ListStuck(b.ctx, idempotency.ListStuckRequest{Namespace: "storetest", Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for k, name := range want {
			if !containsKey(list, k) {
				t.Fatalf("ListStuck must list the %s record", name)
			}
		}
		for k, name := range unwanted {
			if containsKey(list, k) {
				t.Fatalf("ListStuck must not list the %s record", name)
			}
		}
		for i := 1; i < len(list); i++ {
			if list[i].FirstClaimedAt.Before(list[i-1].FirstClaimedAt) {
				t.Fatalf("ListStuck: oldest first claim first, got %v", keys(list))
			}
		}
		other, err := op.ListStuck(b.ctx, idempotency.ListStuckRequest{Namespace: "other-namespace"})
		if err != nil || len(other) != 0 {
			t.Fatalf("ListStuck must filter by namespace: %v %v", keys(other), err)
		}
		one, err := op.ListStuck(b.ctx, idempotency.ListStuckRequest{Limit: 1})
		if err != nil || len(one) != 1 {
			t.Fatalf("ListStuck must honour the limit: %v %v", keys(one), err)
		}
	}),
	operatorCase("SettleRefusesALiveClaimUnlessForced", func(t *testing.T, b *bundle, op idempotency.Operator) {
		key := newKey()
		rec := plainClaim(t, b, key)
		got, err := op.Settle(b.ctx, idempotency.SettleRequest{Key: key, Token: rec.Token, State: idempotency.StateFailed, Reason: "nothing at the provider"})
		if !errors.Is(err, idempotency.ErrClaimLive) || got.Token != rec.Token {
			t.Fatalf("settling a live claim without Force: want ErrClaimLive, got %v", err)
		}
		if cur, _ := b.lookup(t, key); cur.State != idempotency.StateCalling {
			t.Fatalf("a refused settlement must change nothing: %+v", cur)
		}
		got, err = op.Settle(b.ctx, idempotency.SettleRequest{Key: key, Token: rec.Token, State: idempotency.StateFailed, Reason: "operator", Force: true})
		if err != nil || got.State != idempotency.StateFailed {
			t.Fatalf("a forced settlement: %+v %v", got, err)
		}
	}),
	operatorCase("SettleResolvesARecordInDoubt", func(t *testing.T, b *bundle, op idempotency.Operator) {
		key := newKey()
		seeds["in_doubt"](t, b, key)
		cur, _ := b.lookup(t, key)
		if _, err := op.Settle(b.ctx, idempotency.SettleRequest{Key: key, Token: cur.Token + 1000, State: idempotency.StateApplied, Result: []byte(`1`)}); !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("Settle with a wrong token: want ErrClaimLost, got %v", err)
		}
		if _, err := op.Settle(b.ctx, idempotency.SettleRequest{Key: key, Token: cur.Token, State: idempotency.StateCalling}); !isInvalid(err) {
			t.Fatalf("Settle to a pending state: want ErrInvalidTransition, got %v", err)
		}
		rec, err := op.Settle(b.ctx, idempotency.SettleRequest{Key: key, Token: cur.Token, State: idempotency.StateApplied,
			Result: []byte(`{"id":"found"}`), Reason: "checked the provider"})
		if err != nil || rec.State != idempotency.StateApplied || string(rec.Result) != `{"id":"found"}` || rec.Reason != "checked the provider" {
			t.Fatalf("settled: %+v %v", rec, err)
		}
		r := req(key)
		r.TakeOver, r.Reconcile = true, true
		if c := b.claim(t, r); c.Verdict != idempotency.VerdictDone {
			t.Fatalf("a settled record blocks the key: %v", c.Verdict)
		}
		if _, err := op.Settle(b.ctx, idempotency.SettleRequest{Key: key, Token: cur.Token, State: idempotency.StateFailed}); !errors.Is(err, idempotency.ErrClaimLost) {
			t.Fatalf("settling a finished record: want ErrClaimLost, got %v", err)
		}
	}),
	operatorCase("RevokeFreesTheKeyAndKeepsTheResult", func(t *testing.T, b *bundle, op idempotency.Operator) {
		key := newKey()
		first := plainClaim(t, b, key)
		b.complete(t, key, first.Token, `"code-1"`)
		rev, err := op.Revoke(b.ctx, key, "subscription cancelled")
		if err != nil || rev.State != idempotency.StateRevoked || string(rev.Result) != `"code-1"` || rev.Reason != "subscription cancelled" {
			t.Fatalf("revoked: %+v %v", rev, err)
		}
		if _, err := op.Revoke(b.ctx, key, "again"); !errors.Is(err, idempotency.ErrNotFound) {
			t.Fatalf("second Revoke: want ErrNotFound, got %v", err)
		}
		second := plainClaim(t, b, key)
		b.complete(t, key, second.Token, `"code-2"`)
		if rec, _ := b.lookup(t, key); string(rec.Result) != `"code-2"` {
			t.Fatalf("after revocation the new record is the active one: %+v", rec)
		}
		pending := newKey()
		plainClaim(t, b, pending)
		if _, err := op.Revoke(b.ctx, pending, "x"); !errors.Is(err, idempotency.ErrNotFound) {
			t.Fatalf("Revoke of a pending record: want ErrNotFound, got %v", err)
		}
		if _, err := op.Revoke(b.ctx, newKey(), "x"); !errors.Is(err, idempotency.ErrNotFound) {
			t.Fatalf("Revoke of a missing record: want ErrNotFound, got %v", err)
		}
	}),
	operatorCase("HistoryListsEveryRecordNewestFirst", func(t *testing.T, b *bundle, op idempotency.Operator) {
		key := newKey()
		first := plainClaim(t, b, key)
		b.change(t, idempotency.Fail(key, first.Token, "declined"))
		b.clock.Advance(time.Second)
		second := plainClaim(t, b, key)
		b.complete(t, key, second.Token, `"ok"`)
		b.clock.Advance(time.Second)
		if _, err := op.Revoke(b.ctx, key, "undone"); err != nil {
			t.Fatal(err)
		}
		b.clock.Advance(time.Second)
		third := plainClaim(t, b, key)
		h, err := op.History(b.ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(h) != 3 || h[0].Token != third.Token || h[1].State != idempotency.StateRevoked || h[2].State != idempotency.StateFailed {
			t.Fatalf("History: want the pending, revoked and failed records, newest first; got %+v", h)
		}
		if none, err := op.History(b.ctx, newKey()); err != nil || len(none) != 0 {
			t.Fatalf("History of an unknown key: %v %v", none, err)
		}
	}),
}
