package idempotency

import (
	"fmt"
	"slices"
	"time"
)

// State is where a ledger record stands. Every record has exactly one
// state, stored as is; nothing is derived from flags or zero times. The
// transitions between states are listed once, in Transitions, and drawn in
// docs/state-machine.md.
//
// Three facts define a pending (active, unfinished) state: whether a holder
// owns the record under a lease, whether the provider may already have
// acted under the current provider key, and what the next run may do.
//
//	state        holder   provider may have acted   next run
//	claimed      yes      no                        waits for the lease; then takes it over (nothing was sent)
//	calling      yes      yes                       waits for the lease; then retries under the same key (ExpiredRetry, inside the window) or reconciles
//	reconciling  yes      yes                       waits for the lease; then reconciles again (a reconciler sends nothing until it moves to calling)
//	released     no       no                        claims it once due, at any age, restarting the provider's window
//	unknown      no       yes                       retries under the same key (ExpiredRetry, while a run fits in the window) or reconciles
//	in_doubt     no       yes                       reconciles with Effect.Find, or waits for an operator
//
// The other states are finished: applied and skipped block the key for
// ever (until revoked); failed and revoked are exempt from the one-active-
// record rule, so a later run may claim the key again.
type State string

const (
	// StateClaimed: a holder owns the record and has not started a
	// provider call (only effects with ExpiredRetryUncalled record the
	// start of a call; others claim straight into StateCalling).
	StateClaimed State = "claimed"
	// StateCalling: a holder owns the record and its provider call may
	// have started, or an earlier attempt under the same provider key may
	// have acted.
	StateCalling State = "calling"
	// StateReconciling: a holder owns an in-doubt record and asks the
	// provider (Effect.Find) whether the effect exists. It sends nothing
	// until it moves the record to StateCalling under a new provider-key
	// generation.
	StateReconciling State = "reconciling"
	// StateReleased: nobody holds the record and no attempt under the
	// current provider key may have acted (the provider refused before
	// executing, or nothing was sent). The key is free once DueAt passes,
	// at any age.
	StateReleased State = "released"
	// StateUnknown: nobody holds the record and an attempt may have acted
	// (a timeout, a lost response, a 5xx). A provider that deduplicates
	// replays the first answer to a retry under the same key, so effects
	// with ExpiredRetry retry while a whole run fits in the provider's
	// window; past it the record is in doubt.
	StateUnknown State = "unknown"
	// StateInDoubt: nobody holds the record, an attempt may have acted,
	// and a retry under the same key cannot settle it (the provider
	// ignores keys, replays a saved failure, or has forgotten the key).
	// A run of an effect with Find reconciles it; otherwise an operator
	// settles it.
	StateInDoubt State = "in_doubt"
	// StateApplied: the effect happened; its result is stored.
	StateApplied State = "applied"
	// StateSkipped: the effect decided there was nothing to do; it blocks
	// the key like an applied record.
	StateSkipped State = "skipped"
	// StateFailed: the provider refused. Exempt from the one-active-record
	// rule: a later run may claim the key again.
	StateFailed State = "failed"
	// StateRevoked: the effect was undone by its owner (a promotion code
	// deactivated). Exempt from the one-active-record rule.
	StateRevoked State = "revoked"
)

// States lists every state, pending ones first.
var States = []State{StateClaimed, StateCalling, StateReconciling, StateReleased, StateUnknown, StateInDoubt,
	StateApplied, StateSkipped, StateFailed, StateRevoked}

// Valid reports whether s is one of States.
func (s State) Valid() bool { return slices.Contains(States, s) }

// Active reports whether records in this state block their key: at most one
// active record exists per key (the ledger's partial unique index).
func (s State) Active() bool { return s.Valid() && s != StateFailed && s != StateRevoked }

// Pending reports whether the state is active and unfinished.
func (s State) Pending() bool { return s.Active() && !s.Done() }

// Held reports whether a holder owns records in this state under a lease.
func (s State) Held() bool { return s == StateClaimed || s == StateCalling || s == StateReconciling }

// Done reports whether the state is a finished, active outcome (applied or
// skipped).
func (s State) Done() bool { return s == StateApplied || s == StateSkipped }

// MayHaveActed reports whether, in this state, the provider may already
// have acted under the record's current provider key.
func (s State) MayHaveActed() bool {
	return s == StateCalling || s == StateReconciling || s == StateUnknown || s == StateInDoubt
}

// Verdict is what a claim decides about a key, from the record's state, the
// request and the time: exactly the rule every store implements (Decide in
// Go; the same rule in pgguard's claim statement), checked against one table
// of cases by storetest.
type Verdict uint8

const (
	// VerdictAcquired: the caller now holds a claim (a new record, a free
	// one, or an expired one taken over) and may call the provider.
	VerdictAcquired Verdict = iota + 1
	// VerdictReconcile: the caller now holds an in-doubt record in
	// StateReconciling and must ask the provider (Effect.Find) before
	// anything is sent.
	VerdictReconcile
	// VerdictDone: the record is applied or skipped.
	VerdictDone
	// VerdictInFlight: a holder owns the record under a live lease.
	VerdictInFlight
	// VerdictNotDue: the record may not be tried before Record.DueAt (a
	// provider's Retry-After, a backoff) or, for a reconciliation, before
	// the last attempt's lease ends (Record.LeaseUntil).
	VerdictNotDue
	// VerdictMismatch: the record was claimed with another payload
	// fingerprint.
	VerdictMismatch
	// VerdictInDoubt: the provider may have acted and this request cannot
	// find out (the effect has no Find): an operator settles the record.
	VerdictInDoubt
)

var verdictNames = [...]string{
	VerdictAcquired:  "acquired",
	VerdictReconcile: "reconcile",
	VerdictDone:      "done",
	VerdictInFlight:  "in_flight",
	VerdictNotDue:    "not_due",
	VerdictMismatch:  "mismatch",
	VerdictInDoubt:   "in_doubt",
}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) && verdictNames[v] != "" {
		return verdictNames[v]
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// Holds reports whether the caller holds a claim after this verdict.
func (v Verdict) Holds() bool { return v == VerdictAcquired || v == VerdictReconcile }

// Decide is the claim rule: what a ClaimRequest made at now decides about an
// existing active record rec, and the state the record moves to when the
// caller acquires it (empty otherwise). Stores call it, or implement the
// same rule in their own language; storetest checks both against one table.
//
// In order:
//   - another fingerprint: mismatch (every state, checked first);
//   - applied or skipped: done;
//   - held under a live lease: in flight;
//   - claimed (nothing was sent) with an expired lease: acquired;
//   - released: acquired once due, at any age;
//   - unknown not yet due: not due;
//   - calling with an expired lease, or unknown: acquired under the same
//     provider key when the request allows takeover (the provider
//     deduplicates) and a whole run (now + Lease) fits before DedupUntil;
//   - otherwise the record is in doubt: without Find, in doubt; with Find,
//     not due until DueAt and until the last attempt's lease has ended, then
//     reconcile.
func Decide(rec Record, req ClaimRequest, now time.Time) (Verdict, State) {
	if !rec.FingerprintMatches(req.Fingerprint) {
		return VerdictMismatch, ""
	}
	switch rec.State {
	case StateApplied, StateSkipped:
		return VerdictDone, ""
	case StateClaimed, StateCalling, StateReconciling:
		if now.Before(rec.LeaseUntil) {
			return VerdictInFlight, ""
		}
	}
	switch rec.State {
	case StateClaimed:
		return VerdictAcquired, req.claimState()
	case StateReleased:
		if now.Before(rec.DueAt) {
			return VerdictNotDue, ""
		}
		return VerdictAcquired, req.claimState()
	case StateUnknown:
		if now.Before(rec.DueAt) {
			return VerdictNotDue, ""
		}
	}
	if (rec.State == StateCalling || rec.State == StateUnknown) && req.TakeOver && FitsWindow(rec, req, now) {
		return VerdictAcquired, StateCalling
	}
	// In doubt: calling past its lease, unknown past the window (or without
	// takeover), reconciling past its lease, in_doubt.
	if !req.Reconcile {
		return VerdictInDoubt, ""
	}
	if now.Before(rec.DueAt) || now.Before(rec.LeaseUntil) {
		return VerdictNotDue, ""
	}
	return VerdictReconcile, StateReconciling
}

// DedupDeadline is when the provider may forget the record's current
// provider key: DedupUntil, or, for a record stored without one (a ledger
// upgraded from an earlier version), FirstClaimedAt plus the request's
// window. Zero means never.
func DedupDeadline(rec Record, window time.Duration) time.Time {
	if !rec.DedupUntil.IsZero() || window <= 0 {
		return rec.DedupUntil
	}
	return rec.FirstClaimedAt.Add(window)
}

// FitsWindow reports whether a run claimed at now, holding its lease for
// req.Lease, ends before the provider may forget the record's key.
func FitsWindow(rec Record, req ClaimRequest, now time.Time) bool {
	d := DedupDeadline(rec, req.Window)
	return d.IsZero() || !now.Add(req.Lease).After(d)
}

// NewDedupDeadline is the DedupUntil a claim stores when it starts a
// provider key afresh (a first claim, a claim of a released record, a new
// generation): now plus the window, or zero for an unlimited window.
func NewDedupDeadline(now time.Time, window time.Duration) time.Time {
	if window <= 0 {
		return time.Time{}
	}
	return now.Add(window)
}

// Stuck reports whether nobody will finish rec on their own at now: in
// doubt, held past its lease, or unknown past the provider's window. These
// are the records Operator.ListStuck lists.
func Stuck(rec Record, now time.Time) bool {
	switch rec.State {
	case StateInDoubt:
		return true
	case StateClaimed, StateCalling, StateReconciling:
		return !now.Before(rec.LeaseUntil)
	case StateUnknown:
		d := rec.DedupUntil
		return !d.IsZero() && !now.Before(d)
	}
	return false
}

func (req ClaimRequest) claimState() State {
	if req.Track {
		return StateClaimed
	}
	return StateCalling
}

// Actor says who makes a transition.
type Actor uint8

const (
	// ByHolder: the holder of the current claim, fenced by its token.
	ByHolder Actor = iota + 1
	// ByClaim: a Claim that acquires the record (Decide).
	ByClaim
	// ByFormerHolder: a holder whose claim was lost (its lease expired and
	// the record was taken over or settled) and whose provider call
	// succeeded: it records that success when no live claim holds the key.
	ByFormerHolder
	// ByOperator: a person or tool resolving a record by hand (Settle,
	// Revoke), fenced by the token it saw; a live claim is refused unless
	// forced.
	ByOperator
)

func (a Actor) String() string {
	switch a {
	case ByHolder:
		return "holder"
	case ByClaim:
		return "claim"
	case ByFormerHolder:
		return "former holder"
	case ByOperator:
		return "operator"
	}
	return fmt.Sprintf("Actor(%d)", uint8(a))
}

// Rule is one row of the transition table.
type Rule struct {
	From []State
	To   State
	By   Actor
	// Name is the operation, as the Change constructors and
	// docs/state-machine.md call it.
	Name string
	// Leaves says what the transition leaves behind.
	Leaves string
}

var pendingStates = []State{StateClaimed, StateCalling, StateReconciling, StateReleased, StateUnknown, StateInDoubt}

// Transitions is the state machine: every transition a record may make,
// who may make it, and what it leaves behind. Stores refuse any other
// (ErrInvalidTransition); storetest checks each row.
var Transitions = []Rule{
	{nil, StateClaimed, ByClaim, "claim", "a new record, or a released or never-called one taken over, held under a fresh token by an effect that records the start of its call"},
	{nil, StateCalling, ByClaim, "claim", "as claim, for effects that do not record the start of their call; or an expired calling or unknown record taken over under the same provider key"},
	{[]State{StateCalling, StateReconciling, StateUnknown, StateInDoubt}, StateReconciling, ByClaim, "reconcile", "an in-doubt record held by a reconciler that asks the provider before anything is sent"},
	{[]State{StateClaimed}, StateCalling, ByHolder, "mark-calling", "the holder's provider call may start; a worker that dies now leaves a record in doubt"},
	{[]State{StateClaimed, StateCalling, StateReconciling}, "", ByHolder, "extend", "the same state with a lease running from now (the state is unchanged)"},
	{[]State{StateClaimed, StateCalling}, StateApplied, ByHolder, "complete", "the result, the attempts' evidence; the key blocked for ever"},
	{[]State{StateClaimed, StateCalling}, StateSkipped, ByHolder, "skip", "the result; the key blocked for ever"},
	{[]State{StateReconciling}, StateApplied, ByHolder, "found", "the object the provider had made, as the result; nothing was sent"},
	{[]State{StateReconciling}, StateCalling, ByHolder, "resend", "the provider had nothing: a new provider-key generation and window; the holder sends again"},
	{[]State{StateClaimed, StateCalling}, StateFailed, ByHolder, "fail", "the refusal's reason; the key free for a deliberate later run"},
	{[]State{StateClaimed, StateCalling}, StateReleased, ByHolder, "release", "no holder; nothing acted: the key free once due, at any age"},
	{[]State{StateCalling}, StateUnknown, ByHolder, "release-unknown", "no holder; the provider may have acted; a retry under the same key inside the window, or a reconciliation"},
	{[]State{StateCalling, StateReconciling}, StateInDoubt, ByHolder, "park", "no holder; the provider may have acted and the same key cannot tell: a reconciliation (Find) or an operator"},
	{pendingStates, StateApplied, ByFormerHolder, "recover", "a success whose completion was refused, recorded because no live claim holds the key (a new record if the old one was settled failed)"},
	{pendingStates, StateApplied, ByOperator, "settle", "an operator's decision, with the result found at the provider"},
	{pendingStates, StateSkipped, ByOperator, "settle", "an operator's decision"},
	{pendingStates, StateFailed, ByOperator, "settle", "an operator's decision; the key free"},
	{[]State{StateApplied, StateSkipped}, StateRevoked, ByOperator, "revoke", "the result kept for the audit trail; the key free"},
}

type ruleKey struct {
	to State
	by Actor
}

// allowed indexes Transitions by target and actor.
var allowed = func() map[ruleKey][]State {
	m := map[ruleKey][]State{}
	for _, r := range Transitions {
		k := ruleKey{r.To, r.By}
		for _, f := range r.From {
			if !slices.Contains(m[k], f) {
				m[k] = append(m[k], f)
			}
		}
	}
	return m
}()

// Allowed returns the states a change to `to` by actor may start from, as
// listed in Transitions. An empty to means "the same state" (extend). The
// slice is shared: do not modify it.
func Allowed(to State, by Actor) []State { return allowed[ruleKey{to, by}] }
