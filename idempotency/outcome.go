package idempotency

import (
	"fmt"
	"time"
)

// Outcome says what happened to one run of an effect. The table below is the
// whole error story: the outcome, the error Run returns with it, the record
// it leaves, and what a queue consumer does with it (Result.Disposition).
//
//	outcome               error (errors.Is)         record afterwards                     disposition
//	applied               nil                       applied                               ack
//	already_applied       nil                       applied or skipped, untouched         ack
//	skipped               nil                       skipped                               ack
//	reconciled            nil                       applied with the found object         ack
//	in_flight             nil                       held by another live claim            retry after its lease
//	not_due               ErrNotDue                 released/unknown/in doubt, untouched   retry when due
//	retryable             ErrRetryable              released or unknown                   retry when due
//	permanent             ErrPermanent              failed (key free)                     dead-letter
//	mismatch              ErrFingerprintMismatch    untouched, or failed (provider's)     dead-letter
//	needs_reconciliation  ErrNeedsReconciliation    in doubt                              dead-letter (Find or an operator settles it)
//	error                 the store's or ctx's      absent, or held until its lease ends  retry
//	invalid               ErrInvalidEffect/Key      absent: nothing was written           dead-letter
type Outcome uint8

const (
	// OutcomeApplied: the provider was called in this run and the result
	// recorded.
	OutcomeApplied Outcome = iota + 1
	// OutcomeAlreadyApplied: an applied or skipped record was already
	// there; its stored result is returned and the provider was not called.
	OutcomeAlreadyApplied
	// OutcomeSkipped: the effect's Call decided there was nothing to do and
	// the skip was recorded.
	OutcomeSkipped
	// OutcomeInFlight: another worker holds a live claim on the key. Run
	// returns a nil error: nothing is wrong, but nothing is done either;
	// redeliver later (Disposition) in case that worker fails.
	OutcomeInFlight
	// OutcomeRetryable: the provider call failed in a way that may succeed
	// later; the claim was released and the key kept for the next run.
	OutcomeRetryable
	// OutcomePermanent: the provider refused; the record was marked failed.
	OutcomePermanent
	// OutcomeMismatch: the key is used with another payload.
	OutcomeMismatch
	// OutcomeNeedsReconciliation: the provider may have acted and a blind
	// retry could duplicate the effect. The record is in doubt: an effect
	// with Find settles it on a later run; otherwise an operator does.
	OutcomeNeedsReconciliation
	// OutcomeError: the run could not finish for a reason outside the
	// provider: the store failed, the completion hook failed, or the
	// context was done before the claim. Nothing was lost: the record is
	// absent, or held under a lease that will expire, and a later run
	// decides by the effect's policy.
	OutcomeError
	// OutcomeInvalid: the effect or the input is unusable (no Key function,
	// a key part that is empty, a fingerprint that cannot be computed).
	// Nothing touched the store or the provider.
	OutcomeInvalid
	// OutcomeNotDue: the record may not be tried yet: a provider's
	// Retry-After or a backoff from an earlier run, or an earlier attempt
	// that may still be running. Nothing was done.
	OutcomeNotDue
	// OutcomeReconciled: a record in doubt was found at the provider
	// (Effect.Find) and recorded as applied, with no provider call.
	OutcomeReconciled
)

var outcomeNames = [...]string{
	OutcomeApplied:             "applied",
	OutcomeAlreadyApplied:      "already_applied",
	OutcomeSkipped:             "skipped",
	OutcomeInFlight:            "in_flight",
	OutcomeRetryable:           "retryable",
	OutcomePermanent:           "permanent",
	OutcomeMismatch:            "mismatch",
	OutcomeNeedsReconciliation: "needs_reconciliation",
	OutcomeError:               "error",
	OutcomeInvalid:             "invalid",
	OutcomeNotDue:              "not_due",
	OutcomeReconciled:          "reconciled",
}

// Outcomes lists every outcome, in order.
var Outcomes = []Outcome{OutcomeApplied, OutcomeAlreadyApplied, OutcomeSkipped, OutcomeInFlight, OutcomeRetryable,
	OutcomePermanent, OutcomeMismatch, OutcomeNeedsReconciliation, OutcomeError, OutcomeInvalid, OutcomeNotDue, OutcomeReconciled}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) && outcomeNames[o] != "" {
		return outcomeNames[o]
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Good reports whether the intent is done: applied, already applied,
// skipped or reconciled.
func (o Outcome) Good() bool {
	return o == OutcomeApplied || o == OutcomeAlreadyApplied || o == OutcomeSkipped || o == OutcomeReconciled
}

// Result is what one run of an effect did.
type Result[Out any] struct {
	Outcome Outcome
	Key     Key
	// Value is the result: fresh for Applied and Skipped, decoded from the
	// ledger for AlreadyApplied, found at the provider for Reconciled.
	Value Out
	// Record is the ledger record written or met, where there is one.
	Record Record
	// Calls is the number of times this run invoked the effect's Call (0
	// unless the claim was acquired; more than 1 only with in-run
	// retries). A Call may refuse before reaching the provider, so count
	// real effects at the provider.
	Calls int
	// Attempts is the evidence this run's attempts left (also appended to
	// the record's Evidence).
	Attempts []Attempt
	// Reconciled reports that this run asked the provider about a record
	// in doubt (Effect.Find): found (OutcomeReconciled) or sent again.
	Reconciled bool
	// LostResult is, when the provider succeeded but the ledger could not
	// record it (OutcomeError from a failed completion,
	// OutcomeNeedsReconciliation with a *LostResultError), the encoded
	// result the provider returned: keep it where an operator sees it.
	// Nil otherwise.
	LostResult []byte
	// Delay is, for in_flight, not_due and retryable, how long to wait
	// before another delivery is worth making (the holder's lease, the
	// record's due time); zero when no wait is known.
	Delay time.Duration
	// Err is the cause for failures; Run returns it too.
	Err error
}

// Action is what a queue consumer does with the message that triggered a
// run.
type Action uint8

const (
	// Ack: the intent is done (or was refused for good and recorded):
	// delete the message.
	Ack Action = iota + 1
	// Retry: redeliver the message later (nack with a delay, or let the
	// visibility timeout lapse), after Disposition.Delay when it is set.
	Retry
	// DeadLetter: no redelivery can help; move the message where a person
	// will see it. The ledger says why (a refusal, a mismatch, a record in
	// doubt).
	DeadLetter
)

func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead_letter"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// Disposition is what a queue consumer or a webhook handler does with the
// delivery that triggered a run.
type Disposition struct {
	Action Action
	// Delay is the wait before a redelivery is worth making (Retry only);
	// zero when none is known.
	Delay time.Duration
}

// Disposition maps the run's outcome to ack, retry later or dead-letter
// (the table on Outcome). In flight is a retry, never an ack: the claim's
// holder may still fail, and then only a redelivery makes the effect
// happen.
func (r Result[Out]) Disposition() Disposition { return DispositionOf(r.Outcome, r.Delay) }

// DispositionOf is Result.Disposition for an outcome and a known delay.
func DispositionOf(o Outcome, delay time.Duration) Disposition {
	switch o {
	case OutcomeApplied, OutcomeAlreadyApplied, OutcomeSkipped, OutcomeReconciled:
		return Disposition{Action: Ack}
	case OutcomeInFlight, OutcomeNotDue, OutcomeRetryable, OutcomeError:
		return Disposition{Action: Retry, Delay: max(delay, 0)}
	}
	return Disposition{Action: DeadLetter}
}
