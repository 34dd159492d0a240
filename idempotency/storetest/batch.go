package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

// batchCase skips stores that do not implement idempotency.BatchStore.
func batchCase(name string, fn func(t *testing.T, b *bundle, bs idempotency.BatchStore)) testCase {
	return testCase{"Batch/" + name, func(t *testing.T, b *bundle) {
		bs, ok := b.store.(idempotency.BatchStore)
		if !ok {
			t.Skip("the store does not implement idempotency.BatchStore")
		}
		fn(t, b, bs)
	}}
}

func (b *bundle) claimMany(t *testing.T, bs idempotency.BatchStore, reqs ...idempotency.ClaimRequest) []idempotency.Claim {
	t.Helper()
	got, err := bs.ClaimMany(b.ctx, reqs)
	if err != nil {
		t.Fatalf("ClaimMany(%d requests): %v", len(reqs), err)
	}
	if len(got) != len(reqs) {
		t.Fatalf("ClaimMany: %d answers to %d requests", len(got), len(reqs))
	}
	for i, c := range got {
		if c.Record.Key != reqs[i].Key {
			t.Fatalf("ClaimMany: answer %d is for %q, the request for %q", i, c.Record.Key, reqs[i].Key)
		}
	}
	return got
}

func (b *bundle) changeMany(t *testing.T, bs idempotency.BatchStore, cs ...idempotency.Change) []idempotency.TransitionResult {
	t.Helper()
	got, err := bs.TransitionMany(b.ctx, cs)
	if err != nil {
		t.Fatalf("TransitionMany(%d changes): %v", len(cs), err)
	}
	if len(got) != len(cs) {
		t.Fatalf("TransitionMany: %d results for %d changes", len(got), len(cs))
	}
	return got
}

// fillers seeds two keys whose verdicts in any batch are known: a fresh key
// (acquired) and an applied one (done). Every table row below is claimed in
// a batch with them, so each situation is decided inside a mixed batch.
func fillers(t *testing.T, b *bundle) (fresh, applied idempotency.ClaimRequest) {
	t.Helper()
	fresh, applied = req(newKey()), req(newKey())
	seeds["applied"](t, b, applied.Key)
	return fresh, applied
}

var batchCases = []testCase{
	batchCase("VerdictTable", func(t *testing.T, b *bundle, bs idempotency.BatchStore) {
		// The claim rule's table, each row decided by ClaimMany between a
		// fresh key and an applied one: the same verdicts, states, tokens
		// and deadlines as Claim.
		for _, row := range VerdictTable {
			t.Run(row.Seed+"/"+row.Request, func(t *testing.T) {
				key := newKey()
				seeds[row.Seed](t, b, key)
				before, existed := b.lookup(t, key)
				fresh, applied := fillers(t, b)
				r := req(key)
				requests[row.Request](&r)
				got := b.claimMany(t, bs, fresh, r, applied)
				if got[0].Verdict != acquired || got[2].Verdict != done {
					t.Fatalf("the fillers: want acquired and done, got %v and %v", got[0].Verdict, got[2].Verdict)
				}
				c := got[1]
				if c.Verdict != row.Verdict {
					t.Fatalf("%s, %s request in a batch: want verdict %v, got %v (record %+v)", row.Seed, row.Request, row.Verdict, c.Verdict, c.Record)
				}
				if !row.Verdict.Holds() {
					after, _ := b.lookup(t, key)
					if existed && (after.Token != before.Token || after.State != before.State || after.Claims != before.Claims) {
						t.Fatalf("a claim that does not hold must change nothing: before %+v, after %+v", before, after)
					}
					if existed && c.Record.Token != before.Token {
						t.Fatalf("the claim must return the record it met: %+v", c.Record)
					}
					return
				}
				rec := c.Record
				now := b.clock.Now()
				if rec.State != row.State || !rec.LeaseUntil.Equal(now.Add(lease)) || !rec.DueAt.IsZero() {
					t.Fatalf("%s, %s request in a batch: want state %q, leased from now, due; got %+v", row.Seed, row.Request, row.State, rec)
				}
				if existed && (rec.Token == before.Token || rec.Claims != before.Claims+1 || rec.PrevState != before.State) {
					t.Fatalf("a takeover in a batch: a new token, one more claim, the previous state; before %+v, after %+v", before, rec)
				}
				if !existed && (rec.Claims != 1 || rec.Generation != 1 || rec.PrevState != "" || rec.Namespace != "storetest") {
					t.Fatalf("a new record in a batch: %+v", rec)
				}
				restarts := !existed || before.State == idempotency.StateClaimed || before.State == idempotency.StateReleased
				switch {
				case restarts && !rec.DedupUntil.Equal(now.Add(window)):
					t.Fatalf("a batch claim of a key nothing acted under stores now + window: %+v", rec)
				case !restarts && !rec.DedupUntil.Equal(before.DedupUntil):
					t.Fatalf("a batch takeover keeps the provider's deadline (%v): %+v", before.DedupUntil, rec)
				}
				if cur, ok := b.lookup(t, key); !ok || cur.Token != rec.Token || cur.State != rec.State {
					t.Fatalf("the batch claim must be what the store holds: %+v / %+v", rec, cur)
				}
			})
		}
	}),
	batchCase("TransitionTable", func(t *testing.T, b *bundle, bs idempotency.BatchStore) {
		// Every holder rule from every active state, applied by
		// TransitionMany next to a change that succeeds and one that is
		// lost: each fenced on its own.
		for _, rule := range idempotency.Transitions {
			mk, ok := holderChanges[rule.Name]
			if rule.By != idempotency.ByHolder || !ok {
				continue
			}
			for _, from := range idempotency.States {
				sd, ok := stateSeeds[from]
				if !ok {
					continue
				}
				t.Run(rule.Name+"/from-"+string(from), func(t *testing.T) {
					key, ok1, lost := newKey(), newKey(), newKey()
					sd(t, b, key)
					before, _ := b.lookup(t, key)
					held := plainClaim(t, b, ok1)
					c := mk(key, before.Token)
					got := b.changeMany(t, bs,
						idempotency.Complete(ok1, held.Token, []byte(`"ok"`)),
						c,
						idempotency.Complete(lost, 42, []byte(`"never"`)))
					if got[0].Err != nil || got[0].Record.State != idempotency.StateApplied || got[0].Record.Key != ok1 {
						t.Fatalf("the neighbour's completion: %+v", got[0])
					}
					mustBeLost(t, "a change of a key never claimed, in a batch", got[2].Err)
					rec, err := got[1].Record, got[1].Err
					if !slices.Contains(c.From(), from) {
						mustBeLost(t, rule.Name+" from "+string(from)+" in a batch", err)
						after, _ := b.lookup(t, key)
						if after.State != before.State || after.Token != before.Token || !after.UpdatedAt.Equal(before.UpdatedAt) {
							t.Fatalf("a refused change must change nothing: before %+v, after %+v", before, after)
						}
						return
					}
					if err != nil {
						t.Fatalf("%s from %s in a batch: %v", rule.Name, from, err)
					}
					checkLeft(t, b, rule, before, rec)
				})
			}
		}
	}),
	batchCase("MixedClaimBatchWithDuplicateKeys", func(t *testing.T, b *bundle, bs idempotency.BatchStore) {
		fresh, applied, live, expired, other, released := newKey(), newKey(), newKey(), newKey(), newKey(), newKey()
		seeds["applied"](t, b, applied)
		seeds["claimed-expired"](t, b, expired) // moves the clock: seeded before the live one
		seeds["calling-live"](t, b, live)
		seeds["released"](t, b, released)
		seeds["applied"](t, b, other)
		withFP := func(key, fp string) idempotency.ClaimRequest {
			r := req(key)
			r.Fingerprint = []byte(fp)
			return r
		}
		tracked := req(expired)
		tracked.Track = true
		takeover := req(released)
		takeover.TakeOver = true
		reqs := []idempotency.ClaimRequest{
			req(fresh),               // 0 acquired, a new record
			req(applied),             // 1 done
			req(live),                // 2 in flight
			tracked,                  // 3 acquired: an expired claim nothing was sent under
			withFP(other, "fp-2"),    // 4 mismatch
			req(fresh),               // 5 the key request 0 just acquired: in flight
			withFP(fresh, "fp-2"),    // 6 ... and with another payload: mismatch
			req(applied),             // 7 done again
			req(released),            // 8 acquired
			takeover,                 // 9 the key request 8 just acquired: in flight
			withFP(newKey(), "fp-3"), // 10 acquired
		}
		got := b.claimMany(t, bs, reqs...)
		want := []idempotency.Verdict{acquired, done, inFlight, acquired, mismatch, inFlight, mismatch, done, acquired, inFlight, acquired}
		for i, c := range got {
			if c.Verdict != want[i] {
				t.Fatalf("request %d (%s): want %v, got %v (%+v)", i, c.Record.Key, want[i], c.Verdict, c.Record)
			}
		}
		if got[5].Record.Token != got[0].Record.Token || got[9].Record.Token != got[8].Record.Token {
			t.Fatalf("a repeated key meets the claim the batch just made: %+v / %+v", got[0].Record, got[5].Record)
		}
		if got[3].Record.State != idempotency.StateClaimed || got[3].Record.Claims != 2 {
			t.Fatalf("the tracked takeover: %+v", got[3].Record)
		}
		tokens := map[int64]bool{}
		for _, i := range []int{0, 3, 8, 10} {
			if tokens[got[i].Record.Token] {
				t.Fatalf("every acquisition gets its own token: %v", got)
			}
			tokens[got[i].Record.Token] = true
		}
		// What the batch holds, it holds: one completion each.
		var cs []idempotency.Change
		for _, i := range []int{0, 3, 8, 10} {
			cs = append(cs, idempotency.Complete(got[i].Record.Key, got[i].Record.Token, []byte(fmt.Sprintf("%d", i))))
		}
		for i, r := range b.changeMany(t, bs, cs...) {
			if r.Err != nil || r.Record.State != idempotency.StateApplied {
				t.Fatalf("completion %d: %+v", i, r)
			}
		}
		if empty, err := bs.ClaimMany(b.ctx, nil); err != nil || len(empty) != 0 {
			t.Fatalf("ClaimMany(nil): %v %v", empty, err)
		}
		if empty, err := bs.TransitionMany(b.ctx, nil); err != nil || len(empty) != 0 {
			t.Fatalf("TransitionMany(nil): %v %v", empty, err)
		}
	}),
	batchCase("ChangesOfOneKeyApplyInOrderNeverMerged", func(t *testing.T, b *bundle, bs idempotency.BatchStore) {
		key := newKey()
		rec := plainClaim(t, b, key)
		b.clock.Advance(time.Second)
		got := b.changeMany(t, bs,
			idempotency.Extend(key, rec.Token, 3*lease),
			idempotency.Complete(key, rec.Token, []byte(`"first"`)),
			idempotency.Release(key, rec.Token, "too late", 0),
			idempotency.Complete(key, rec.Token, []byte(`"second"`)))
		if got[0].Err != nil || !got[0].Record.LeaseUntil.Equal(b.clock.Now().Add(3*lease)) {
			t.Fatalf("the extension, first: %+v", got[0])
		}
		if got[1].Err != nil || string(got[1].Record.Result) != `"first"` {
			t.Fatalf("the completion, second: %+v", got[1])
		}
		mustBeLost(t, "a release after the completion of the same claim", got[2].Err)
		mustBeLost(t, "a second completion of the same claim", got[3].Err)
		if cur, _ := b.lookup(t, key); cur.State != idempotency.StateApplied || string(cur.Result) != `"first"` {
			t.Fatalf("the record: %+v", cur)
		}

		// A stale token and the current one for one key, in one batch: only
		// the holder's change is written, whatever the order.
		other := newKey()
		first := plainClaim(t, b, other)
		b.clock.Advance(lease + time.Second)
		second := b.acquire(t, r2(other, true))
		got = b.changeMany(t, bs,
			idempotency.Complete(other, first.Token, []byte(`"stale"`)),
			idempotency.Complete(other, second.Token, []byte(`"holder"`)),
			idempotency.Fail(other, first.Token, "stale"))
		mustBeLost(t, "the former holder's completion", got[0].Err)
		mustBeLost(t, "the former holder's failure", got[2].Err)
		if got[1].Err != nil || string(got[1].Record.Result) != `"holder"` {
			t.Fatalf("the holder's completion: %+v", got[1])
		}
	}),
	batchCase("OneFailingHookUndoesOnlyItsOwnChange", func(t *testing.T, b *bundle, bs idempotency.BatchStore) {
		boom := errors.New("domain insert failed")
		keys := []string{newKey(), newKey(), newKey(), newKey()}
		var cs []idempotency.Change
		var mu sync.Mutex
		ran := map[string]int{}
		for i, k := range keys {
			rec := plainClaim(t, b, k)
			c := idempotency.Complete(k, rec.Token, []byte(fmt.Sprintf(`"%d"`, i)))
			if i != 3 {
				c.Hook = func(context.Context) error {
					mu.Lock()
					ran[k]++
					mu.Unlock()
					if i == 1 {
						return boom
					}
					return nil
				}
			}
			cs = append(cs, c)
		}
		got := b.changeMany(t, bs, cs...)
		if !errors.Is(got[1].Err, boom) {
			t.Fatalf("the failing hook's error comes back with its change: %+v", got[1])
		}
		for _, i := range []int{0, 2, 3} {
			if got[i].Err != nil || got[i].Record.State != idempotency.StateApplied {
				t.Fatalf("change %d must be written despite another hook's failure: %+v", i, got[i])
			}
			if cur, _ := b.lookup(t, keys[i]); cur.State != idempotency.StateApplied {
				t.Fatalf("change %d: %+v", i, cur)
			}
		}
		if cur, _ := b.lookup(t, keys[1]); cur.State != idempotency.StateCalling || cur.Result != nil {
			t.Fatalf("the failing hook's change writes nothing, the claim stays held: %+v", cur)
		}
		for _, i := range []int{0, 1, 2} {
			if ran[keys[i]] != 1 {
				t.Fatalf("each hook runs once: %v", ran)
			}
		}
	}),
	batchCase("HookOfALostChangeDoesNotRun", func(t *testing.T, b *bundle, bs idempotency.BatchStore) {
		key := newKey()
		var ran bool
		got := b.changeMany(t, bs, withHook(idempotency.Complete(key, 7, []byte(`1`)), func(context.Context) error { ran = true; return nil }))
		mustBeLost(t, "a hooked change of a key never claimed", got[0].Err)
		if ran {
			t.Fatal("a change that is refused must not run its hook")
		}
	}),
	batchCase("EvidenceInvalidAndRecoverChangesInABatch", func(t *testing.T, b *bundle, bs idempotency.BatchStore) {
		a, bad, lostKey := newKey(), newKey(), newKey()
		ra := plainClaim(t, b, a)
		plainClaim(t, b, bad)
		// A former holder whose claim was taken over and then released.
		rl := plainClaim(t, b, lostKey)
		b.clock.Advance(lease + time.Second)
		taker := b.acquire(t, r2(lostKey, true))
		b.change(t, idempotency.Release(lostKey, taker.Token, "429", 0))

		ev := []idempotency.Attempt{
			{At: b.clock.Now(), Generation: 1, Class: idempotency.AttemptUnknown, Status: 503, RequestID: "req_1", Error: "503"},
			{At: b.clock.Now().Add(time.Second), Generation: 1, Class: idempotency.AttemptDone, Status: 200, RequestID: "req_2", Replayed: true},
		}
		complete := idempotency.Complete(a, ra.Token, []byte(`"a"`))
		complete.Evidence = ev
		recover := idempotency.Recover(lostKey, rl.Token, "storetest", []byte("fp-1"), []byte(`"recovered"`))
		got := b.changeMany(t, bs, complete, idempotency.Extend(bad, 1, 0), recover)
		if got[0].Err != nil || len(got[0].Record.Evidence) != 2 || got[0].Record.Evidence[1].RequestID != "req_2" || !got[0].Record.Evidence[1].Replayed {
			t.Fatalf("the evidence of a batched completion: %+v", got[0])
		}
		if cur, _ := b.lookup(t, a); len(cur.Evidence) != 2 || cur.Evidence[0].Status != 503 || !cur.Evidence[0].At.Equal(ev[0].At) {
			t.Fatalf("the stored evidence: %+v", cur.Evidence)
		}
		if !isInvalid(got[1].Err) {
			t.Fatalf("an invalid change in a batch: want ErrInvalidTransition, got %v", got[1].Err)
		}
		if got[2].Err != nil || got[2].Record.State != idempotency.StateApplied || string(got[2].Record.Result) != `"recovered"` {
			t.Fatalf("a recovery in a batch: %+v", got[2])
		}
	}),
	batchCase("ConcurrentBatchesOverTheSameKeysAcquireEachKeyOnce", func(t *testing.T, b *bundle, bs idempotency.BatchStore) {
		// Overlapping sweeps: 6 batches of the same 40 keys, each in its own
		// order, at once, plus single claims of the same keys.
		const n, batches = 40, 6
		ks := make([]string, n)
		for i := range ks {
			ks[i] = newKey()
		}
		var mu sync.Mutex
		wins := map[string]int64{}
		note := func(c idempotency.Claim) error {
			if !c.Verdict.Holds() {
				if c.Verdict != idempotency.VerdictInFlight {
					return fmt.Errorf("%s: a losing claim must be in flight, got %v", c.Record.Key, c.Verdict)
				}
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			if tok, dup := wins[c.Record.Key]; dup {
				return fmt.Errorf("%s acquired twice (tokens %d and %d)", c.Record.Key, tok, c.Record.Token)
			}
			wins[c.Record.Key] = c.Record.Token
			return nil
		}
		var seq int64
		concurrently(t, batches+2, func() error {
			mu.Lock()
			seq++
			me := seq
			mu.Unlock()
			order := slices.Clone(ks)
			rng := rand.New(rand.NewPCG(uint64(me), 7))
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			if me > batches {
				for _, k := range order[:n/2] {
					c, err := b.store.Claim(b.ctx, req(k))
					if err != nil {
						return err
					}
					if err := note(c); err != nil {
						return err
					}
				}
				return nil
			}
			reqs := make([]idempotency.ClaimRequest, len(order))
			for i, k := range order {
				reqs[i] = req(k)
			}
			got, err := bs.ClaimMany(b.ctx, reqs)
			if err != nil {
				return err
			}
			for _, c := range got {
				if err := note(c); err != nil {
					return err
				}
			}
			return nil
		})
		if len(wins) != n {
			t.Fatalf("every key acquired exactly once: %d of %d", len(wins), n)
		}
		for k, tok := range wins {
			if cur, ok := b.lookup(t, k); !ok || cur.Token != tok {
				t.Fatalf("%s: the winner's claim is the record: %+v", k, cur)
			}
		}
	}),
}
