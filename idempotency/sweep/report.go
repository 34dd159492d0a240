package sweep

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/effectonce/effectonce/idempotency"
)

// Report says what a sweep did. Every candidate taken from the Source is
// counted exactly once, in Outcomes, in Invalid or in Unstarted:
//
//	Candidates == sum(Outcomes) + Invalid + Unstarted
type Report struct {
	// Candidates is the number of candidates taken from the Source.
	Candidates int
	// Outcomes counts candidates by outcome, whether the pre-flight
	// settled them (AlreadyApplied, Mismatch) or a run did.
	Outcomes map[idempotency.Outcome]int
	// Invalid counts candidates whose key or fingerprint could not be
	// computed. They were never run; each is listed in Failures.
	Invalid int
	// Unstarted counts candidates taken from the Source but not run,
	// because the sweep was cancelled or stopped first. The next sweep
	// picks them up.
	Unstarted int
	// ProviderCalls is the number of provider calls really made (Call
	// invoked, in-run retries included). Attempts the rate limiter refused
	// are not calls.
	ProviderCalls int
	// SavedByPreflight counts candidates the batch pre-flight settled on
	// its own, with no claim and no provider call: already applied or
	// skipped, held elsewhere under a live lease, not yet due, or held
	// with another fingerprint (a mismatch).
	SavedByPreflight int
	// RefusalsRemembered counts candidates skipped because their last
	// record was refused with the same payload within the effect's
	// RememberRefusal (also counted in Outcomes as permanent and in
	// SavedByPreflight; not listed in Failures: the first refusal was).
	RefusalsRemembered int
	// Reconciled counts runs that asked the provider about a record in
	// doubt (Effect.Find): found and recorded (OutcomeReconciled) or sent
	// again under a new provider-key generation.
	Reconciled int
	// Lookups is the number of pre-flight lookups: one Store.Lookup per
	// batch that holds at least one valid key, and one for remembered
	// refusals per batch where the effect remembers them.
	Lookups int
	// ClaimBatches is the number of batch claims: with a store that claims
	// in batches (idempotency.BatchStore), one ClaimMany per batch with
	// candidates left after the pre-flight; zero with other stores, whose
	// runs claim one by one.
	ClaimBatches int
	// Batches is the number of batches processed.
	Batches int
	// Failures lists, by Index, the candidates that did not reach a good
	// outcome and will not by waiting: invalid input, retryable, permanent,
	// mismatch, needs reconciliation (a provider success that could not be
	// recorded among them), store errors. In flight elsewhere and not due
	// are counted in Outcomes only: a later sweep settles them.
	Failures []Failure
}

// Failure is one candidate that did not reach a good outcome.
type Failure struct {
	// Index is the candidate's position in the Source, from 0.
	Index int
	// Key is the candidate's key; zero when it could not be built. In HMAC
	// mode print it through String or log/slog, which show its namespace
	// only.
	Key idempotency.Key
	// Outcome is the run's outcome; zero for a candidate that was never
	// run because its key or fingerprint could not be computed.
	Outcome idempotency.Outcome
	// Err is the cause.
	Err error
}

// String describes the failure without revealing an HMAC-mode key.
func (f Failure) String() string {
	outcome := "invalid"
	if f.Outcome != 0 {
		outcome = f.Outcome.String()
	}
	key := "<no key>"
	if !f.Key.IsZero() {
		key = f.Key.LogValue().String()
	}
	msg := "<nil>"
	if f.Err != nil {
		msg = f.Err.Error()
		if f.Key.HMAC() {
			msg = strings.ReplaceAll(msg, f.Key.String(), "<key>")
		}
	}
	return fmt.Sprintf("#%d %s %s: %s", f.Index, key, outcome, msg)
}

// String summarises the report on one line, outcomes in a fixed order, for
// a cron job's log.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "candidates=%d", r.Candidates)
	for _, o := range slices.Sorted(maps.Keys(r.Outcomes)) {
		if n := r.Outcomes[o]; n > 0 {
			fmt.Fprintf(&b, " %s=%d", o, n)
		}
	}
	if r.Invalid > 0 {
		fmt.Fprintf(&b, " invalid=%d", r.Invalid)
	}
	if r.Unstarted > 0 {
		fmt.Fprintf(&b, " unstarted=%d", r.Unstarted)
	}
	fmt.Fprintf(&b, " provider_calls=%d saved_by_preflight=%d reconciled=%d lookups=%d batches=%d failures=%d",
		r.ProviderCalls, r.SavedByPreflight, r.Reconciled, r.Lookups, r.Batches, len(r.Failures))
	return b.String()
}

// snapshot returns a copy the caller may keep while the sweep goes on.
func (r Report) snapshot() Report {
	r.Outcomes = maps.Clone(r.Outcomes)
	r.Failures = slices.Clip(r.Failures) // append-only below len: safe to share
	return r
}

// Progress is passed to Config.OnProgress after each batch.
type Progress struct {
	// Report holds the cumulative counts so far. Its map and slice are the
	// callback's to keep.
	Report
}
