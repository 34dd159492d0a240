package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

// holderChanges builds the change of each holder rule of
// idempotency.Transitions, by the rule's name.
var holderChanges = map[string]func(key string, token int64) idempotency.Change{
	"mark-calling": idempotency.MarkCalling,
	"extend":       func(k string, t int64) idempotency.Change { return idempotency.Extend(k, t, 2*lease) },
	"complete":     func(k string, t int64) idempotency.Change { return idempotency.Complete(k, t, []byte(`"r"`)) },
	"skip":         func(k string, t int64) idempotency.Change { return idempotency.CompleteSkipped(k, t, []byte(`null`)) },
	"found":        func(k string, t int64) idempotency.Change { return idempotency.Found(k, t, []byte(`"found"`)) },
	"resend":       func(k string, t int64) idempotency.Change { return idempotency.Resend(k, t, lease, window) },
	"fail":         func(k string, t int64) idempotency.Change { return idempotency.Fail(k, t, "refused") },
	"release":      func(k string, t int64) idempotency.Change { return idempotency.Release(k, t, "429", later) },
	"release-unknown": func(k string, t int64) idempotency.Change {
		return idempotency.ReleaseUnknown(k, t, "503", later, true)
	},
	"park": func(k string, t int64) idempotency.Change { return idempotency.Park(k, t, "replayed 500", true) },
}

// stateSeeds bring a key to each active state, held by the suite where the
// state is held.
var stateSeeds = map[idempotency.State]seed{
	idempotency.StateClaimed:     seeds["claimed-live"],
	idempotency.StateCalling:     seeds["calling-live"],
	idempotency.StateReconciling: seeds["reconciling-live"],
	idempotency.StateReleased:    seeds["released"],
	idempotency.StateUnknown:     seeds["unknown"],
	idempotency.StateInDoubt:     seeds["in_doubt"],
	idempotency.StateApplied:     seeds["applied"],
	idempotency.StateSkipped:     seeds["skipped"],
}

var transitionCases = []testCase{
	{"TransitionTable", func(t *testing.T, b *bundle) {
		// Every holder rule, from every active state, with the token of the
		// record's last claim: allowed where the table says so, refused
		// with ErrClaimLost and no change everywhere else.
		for _, rule := range idempotency.Transitions {
			mk, ok := holderChanges[rule.Name]
			if rule.By != idempotency.ByHolder {
				continue
			}
			if !ok {
				t.Fatalf("storetest: no change for the holder rule %q", rule.Name)
			}
			for _, from := range idempotency.States {
				sd, ok := stateSeeds[from]
				if !ok {
					continue
				}
				t.Run(rule.Name+"/from-"+string(from), func(t *testing.T) {
					key := newKey()
					sd(t, b, key)
					before, _ := b.lookup(t, key)
					c := mk(key, before.Token)
					rec, err := b.store.Transition(b.ctx, c)
					if !slices.Contains(c.From(), from) {
						mustBeLost(t, rule.Name+" from "+string(from), err)
						after, _ := b.lookup(t, key)
						if after.State != before.State || after.Token != before.Token || !after.UpdatedAt.Equal(before.UpdatedAt) {
							t.Fatalf("a refused change must change nothing: before %+v, after %+v", before, after)
						}
						return
					}
					if err != nil {
						t.Fatalf("%s from %s: %v", rule.Name, from, err)
					}
					checkLeft(t, b, rule, before, rec)
				})
			}
		}
	}},
	{"StaleTokenChangesNothing", func(t *testing.T, b *bundle) {
		key := newKey()
		first := plainClaim(t, b, key)
		b.clock.Advance(lease + time.Second)
		r := req(key)
		r.TakeOver = true
		second := b.acquire(t, r)
		for name, mk := range holderChanges {
			_, err := b.store.Transition(b.ctx, mk(key, first.Token))
			mustBeLost(t, name+" with the token of a claim taken over", err)
		}
		cur, ok := b.lookup(t, key)
		if !ok || cur.State != idempotency.StateCalling || cur.Token != second.Token || cur.Result != nil {
			t.Fatalf("stale changes altered the record: %+v", cur)
		}
		if done := b.complete(t, key, second.Token, `"ok"`); string(done.Result) != `"ok"` {
			t.Fatalf("the holder's completion: %+v", done)
		}
	}},
	{"ChangeOfAKeyNeverClaimedIsLost", func(t *testing.T, b *bundle) {
		for name, mk := range holderChanges {
			_, err := b.store.Transition(b.ctx, mk(newKey(), 42))
			mustBeLost(t, name+" of a key never claimed", err)
		}
	}},
	{"InvalidChangesAreRefused", func(t *testing.T, b *bundle) {
		key := newKey()
		rec := plainClaim(t, b, key)
		for name, c := range map[string]idempotency.Change{
			"no token":       {Key: key, To: idempotency.StateApplied, By: idempotency.ByHolder},
			"unknown state":  {Key: key, Token: rec.Token, To: "exploded", By: idempotency.ByHolder},
			"operator":       {Key: key, Token: rec.Token, To: idempotency.StateFailed, By: idempotency.ByOperator},
			"holder revokes": {Key: key, Token: rec.Token, To: idempotency.StateRevoked, By: idempotency.ByHolder},
			"extend no time": idempotency.Extend(key, rec.Token, 0),
		} {
			if _, err := b.store.Transition(b.ctx, c); !isInvalid(err) {
				t.Fatalf("%s: want ErrInvalidTransition, got %v", name, err)
			}
		}
		if cur, _ := b.lookup(t, key); cur.State != idempotency.StateCalling || cur.Token != rec.Token {
			t.Fatalf("invalid changes altered the record: %+v", cur)
		}
	}},
}

// checkLeft checks what an allowed holder change left behind.
func checkLeft(t *testing.T, b *bundle, rule idempotency.Rule, before, rec idempotency.Record) {
	t.Helper()
	now := b.clock.Now()
	want := rule.To
	if want == "" {
		want = before.State
	}
	if rec.State != want || rec.PrevState != before.State || rec.Token != before.Token || !rec.UpdatedAt.Equal(now) {
		t.Fatalf("%s from %s: want state %s, previous %s, the same token, updated now; got %+v", rule.Name, before.State, want, before.State, rec)
	}
	switch rule.Name {
	case "extend":
		if !rec.LeaseUntil.Equal(now.Add(2 * lease)) {
			t.Fatalf("extend: lease %v, want %v", rec.LeaseUntil, now.Add(2*lease))
		}
	case "mark-calling":
		if !rec.LeaseUntil.Equal(before.LeaseUntil) {
			t.Fatalf("mark-calling must keep the lease: %+v", rec)
		}
	case "resend":
		if rec.Generation != before.Generation+1 || !rec.DedupUntil.Equal(now.Add(window)) || !rec.LeaseUntil.Equal(now.Add(lease)) {
			t.Fatalf("resend: a new generation with its own window and a lease from now: %+v", rec)
		}
	case "complete", "skip", "found":
		if rec.Result == nil || !rec.LeaseUntil.IsZero() {
			t.Fatalf("%s: a result and no lease: %+v", rule.Name, rec)
		}
		if got, ok := b.lookup(t, rec.Key); !ok || got.State != want || string(got.Result) != string(rec.Result) {
			t.Fatalf("%s: the record must be active with its result: %+v", rule.Name, got)
		}
	case "fail":
		if rec.Reason != "refused" || rec.Result != nil {
			t.Fatalf("fail keeps the reason: %+v", rec)
		}
		if _, ok := b.lookup(t, rec.Key); ok {
			t.Fatal("a failed record must free the key")
		}
	case "release", "release-unknown":
		if !rec.DueAt.Equal(now.Add(later)) || !rec.LeaseUntil.IsZero() {
			t.Fatalf("%s: due later, no lease (the attempt ended): %+v", rule.Name, rec)
		}
	case "park":
		if !rec.LeaseUntil.IsZero() || rec.Reason != "replayed 500" {
			t.Fatalf("park: the reason, no lease (the attempt ended): %+v", rec)
		}
	}
}
