package storetest

import (
	"bytes"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

// A seed brings key to a named situation through the store's own API and
// the clock.
type seed func(t *testing.T, b *bundle, key string)

func claimWith(mod func(*idempotency.ClaimRequest)) func(t *testing.T, b *bundle, key string) idempotency.Record {
	return func(t *testing.T, b *bundle, key string) idempotency.Record {
		r := req(key)
		if mod != nil {
			mod(&r)
		}
		return b.acquire(t, r)
	}
}

var (
	plainClaim   = claimWith(nil)
	trackedClaim = claimWith(func(r *idempotency.ClaimRequest) { r.Track = true })
	findClaim    = claimWith(func(r *idempotency.ClaimRequest) { r.Reconcile = true })
)

func then(s seed, more func(t *testing.T, b *bundle, key string)) seed {
	return func(t *testing.T, b *bundle, key string) { s(t, b, key); more(t, b, key) }
}

func advance(d time.Duration) func(t *testing.T, b *bundle, key string) {
	return func(t *testing.T, b *bundle, key string) { b.clock.Advance(d) }
}

// leaving seeds a held record and applies the change mk makes to it.
func leaving(claim func(*testing.T, *bundle, string) idempotency.Record, mk func(key string, token int64) idempotency.Change) seed {
	return func(t *testing.T, b *bundle, key string) {
		rec := claim(t, b, key)
		b.change(t, mk(key, rec.Token))
	}
}

func inDoubt(ended bool, due time.Duration) seed {
	return leaving(plainClaim, func(key string, token int64) idempotency.Change {
		c := idempotency.Park(key, token, "replayed 500", ended)
		c.DueIn = due
		return c
	})
}

// seeds are the situations of the verdict table, by name.
var seeds = map[string]seed{
	"none":                func(*testing.T, *bundle, string) {},
	"claimed-live":        func(t *testing.T, b *bundle, key string) { trackedClaim(t, b, key) },
	"claimed-expired":     then(func(t *testing.T, b *bundle, key string) { trackedClaim(t, b, key) }, advance(lease+time.Second)),
	"calling-live":        func(t *testing.T, b *bundle, key string) { plainClaim(t, b, key) },
	"calling-expired":     then(func(t *testing.T, b *bundle, key string) { plainClaim(t, b, key) }, advance(lease+time.Second)),
	"calling-expired-end": then(func(t *testing.T, b *bundle, key string) { plainClaim(t, b, key) }, advance(window-lease/2)),
	"reconciling-live":    then(inDoubt(true, 0), func(t *testing.T, b *bundle, key string) { findClaim(t, b, key) }),
	"reconciling-expired": then(then(inDoubt(true, 0), func(t *testing.T, b *bundle, key string) { findClaim(t, b, key) }), advance(lease+time.Second)),
	"released": leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.Release(key, token, "429", 0)
	}),
	"released-not-due": leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.Release(key, token, "429", later)
	}),
	"released-past-window": then(leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.Release(key, token, "429", 0)
	}), advance(2*window)),
	"unknown": leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.ReleaseUnknown(key, token, "503", 0, true)
	}),
	"unknown-not-due": leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.ReleaseUnknown(key, token, "503", later, true)
	}),
	"unknown-past-window": then(leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.ReleaseUnknown(key, token, "503", 0, true)
	}), advance(window)),
	"unknown-attempt-running": leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.ReleaseUnknown(key, token, "timeout", 0, false)
	}),
	"in_doubt":                 inDoubt(true, 0),
	"in_doubt-attempt-running": inDoubt(false, 0),
	"in_doubt-not-due":         inDoubt(true, later),
	"applied": leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.Complete(key, token, []byte(`"done"`))
	}),
	"skipped": leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.CompleteSkipped(key, token, []byte(`null`))
	}),
	"failed": leaving(plainClaim, func(key string, token int64) idempotency.Change {
		return idempotency.Fail(key, token, "card_declined")
	}),
}

// requests are the claim requests of the verdict table, by name.
var requests = map[string]func(*idempotency.ClaimRequest){
	"plain":         func(*idempotency.ClaimRequest) {},
	"takeover":      func(r *idempotency.ClaimRequest) { r.TakeOver = true },
	"track":         func(r *idempotency.ClaimRequest) { r.Track = true },
	"find":          func(r *idempotency.ClaimRequest) { r.Reconcile = true },
	"takeover+find": func(r *idempotency.ClaimRequest) { r.TakeOver, r.Reconcile = true, true },
	"other-payload": func(r *idempotency.ClaimRequest) { r.Fingerprint, r.TakeOver, r.Reconcile = []byte("fp-2"), true, true },
}

const (
	acquired  = idempotency.VerdictAcquired
	reconcile = idempotency.VerdictReconcile
	done      = idempotency.VerdictDone
	inFlight  = idempotency.VerdictInFlight
	notDue    = idempotency.VerdictNotDue
	mismatch  = idempotency.VerdictMismatch
	doubt     = idempotency.VerdictInDoubt
)

// VerdictRow is one case of the claim rule: a record in a situation (Seed),
// a claim request (Request), and what the claim must decide (Verdict) and,
// when it holds, the state the record moves to (State).
type VerdictRow struct {
	Seed    string
	Request string
	Verdict idempotency.Verdict
	State   idempotency.State
}

// VerdictTable is the claim rule as data: every store, and
// idempotency.Decide, must agree with each row. A new policy is a new row
// here plus the code that makes it pass.
var VerdictTable = []VerdictRow{
	{"none", "plain", acquired, idempotency.StateCalling},
	{"none", "track", acquired, idempotency.StateClaimed},
	{"none", "other-payload", acquired, idempotency.StateCalling},

	{"claimed-live", "takeover+find", inFlight, ""},
	{"claimed-live", "other-payload", mismatch, ""},
	{"claimed-expired", "plain", acquired, idempotency.StateCalling},
	{"claimed-expired", "track", acquired, idempotency.StateClaimed},
	{"claimed-expired", "other-payload", mismatch, ""},

	{"calling-live", "takeover+find", inFlight, ""},
	{"calling-expired", "plain", doubt, ""},
	{"calling-expired", "track", doubt, ""},
	{"calling-expired", "takeover", acquired, idempotency.StateCalling},
	{"calling-expired", "find", reconcile, idempotency.StateReconciling},
	{"calling-expired", "takeover+find", acquired, idempotency.StateCalling},
	{"calling-expired-end", "takeover", doubt, ""},
	{"calling-expired-end", "takeover+find", reconcile, idempotency.StateReconciling},

	{"reconciling-live", "takeover+find", inFlight, ""},
	{"reconciling-expired", "takeover", doubt, ""},
	{"reconciling-expired", "find", reconcile, idempotency.StateReconciling},

	{"released", "plain", acquired, idempotency.StateCalling},
	{"released", "track", acquired, idempotency.StateClaimed},
	{"released-not-due", "takeover+find", notDue, ""},
	{"released-past-window", "plain", acquired, idempotency.StateCalling},

	{"unknown", "plain", doubt, ""},
	{"unknown", "track", doubt, ""},
	{"unknown", "takeover", acquired, idempotency.StateCalling},
	{"unknown", "find", reconcile, idempotency.StateReconciling},
	{"unknown-not-due", "takeover", notDue, ""},
	{"unknown-not-due", "plain", notDue, ""},
	{"unknown-past-window", "takeover", doubt, ""},
	{"unknown-past-window", "takeover+find", reconcile, idempotency.StateReconciling},
	{"unknown-attempt-running", "takeover", acquired, idempotency.StateCalling},
	{"unknown-attempt-running", "find", notDue, ""},
	{"unknown-attempt-running", "plain", doubt, ""},

	{"in_doubt", "plain", doubt, ""},
	{"in_doubt", "takeover", doubt, ""},
	{"in_doubt", "find", reconcile, idempotency.StateReconciling},
	{"in_doubt", "other-payload", mismatch, ""},
	{"in_doubt-attempt-running", "find", notDue, ""},
	{"in_doubt-not-due", "find", notDue, ""},
	{"in_doubt-not-due", "plain", doubt, ""},

	{"applied", "takeover+find", done, ""},
	{"applied", "other-payload", mismatch, ""},
	{"skipped", "plain", done, ""},

	{"failed", "plain", acquired, idempotency.StateCalling},
}

var verdictCases = []testCase{
	{"VerdictTable", func(t *testing.T, b *bundle) {
		// One store, one clock, row after row: each seed moves the clock
		// relative to its own key only, so the rows cannot disturb each
		// other.
		for _, row := range VerdictTable {
			t.Run(row.Seed+"/"+row.Request, func(t *testing.T) {
				key := newKey()
				seeds[row.Seed](t, b, key)
				before, existed := b.lookup(t, key)
				r := req(key)
				requests[row.Request](&r)
				c := b.claim(t, r)
				if c.Verdict != row.Verdict {
					t.Fatalf("%s, %s request: want verdict %v, got %v (record %+v)", row.Seed, row.Request, row.Verdict, c.Verdict, c.Record)
				}
				if !row.Verdict.Holds() {
					after, _ := b.lookup(t, key)
					if existed && (after.Token != before.Token || after.State != before.State || after.Claims != before.Claims) {
						t.Fatalf("a claim that does not hold must change nothing: before %+v, after %+v", before, after)
					}
					if c.Record.Key != key || (existed && c.Record.Token != before.Token) {
						t.Fatalf("the claim must return the record it met: %+v", c.Record)
					}
					return
				}
				got := c.Record
				if got.State != row.State {
					t.Fatalf("%s, %s request: want state %q after the claim, got %q", row.Seed, row.Request, row.State, got.State)
				}
				if !got.LeaseUntil.Equal(b.clock.Now().Add(lease)) || !got.DueAt.IsZero() {
					t.Fatalf("a held claim leases from now and is due: %+v", got)
				}
				if existed && (got.Token == before.Token || got.Claims != before.Claims+1 || got.PrevState != before.State) {
					t.Fatalf("a takeover issues a new token, counts the claim and remembers what it took over: before %+v, after %+v", before, got)
				}
				if !existed && (got.Claims != 1 || got.Generation != 1 || got.PrevState != "") {
					t.Fatalf("a new record: claims 1, generation 1, no previous state: %+v", got)
				}
				if !bytes.Equal(got.Fingerprint, r.Fingerprint) && existed {
					t.Fatalf("a takeover keeps the fingerprint: %+v", got)
				}
				// The provider's window restarts only where nothing may have
				// acted under the key.
				fresh := !existed || before.State == idempotency.StateClaimed || before.State == idempotency.StateReleased
				switch {
				case fresh && !got.DedupUntil.Equal(b.clock.Now().Add(window)):
					t.Fatalf("a claim of a key nothing acted under stores now + window as DedupUntil: %+v", got)
				case !fresh && !got.DedupUntil.Equal(before.DedupUntil):
					t.Fatalf("a takeover keeps the provider's deadline (%v): %+v", before.DedupUntil, got)
				}
			})
		}
	}},
}
