package effectotel

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

// Sweep candidate outcomes that are not an idempotency.Outcome.
const (
	// SweepInvalid counts candidates whose key or fingerprint could not be
	// computed (Report.Invalid).
	SweepInvalid = "invalid"
	// SweepUnstarted counts candidates taken but never run because the
	// sweep stopped first (Report.Unstarted).
	SweepUnstarted = "unstarted"
)

// RecordSweep adds a finished sweep of effect (the effect's Name) to the
// sweep counters: effectonce.sweep.candidates by outcome, so that their sum
// is rep.Candidates (invalid and unstarted candidates under their own
// outcome), and effectonce.sweep.saved_by_preflight. Call it once per
// sweep, with the report sweep.Run returned, even with an error: the
// partial report counts what was done.
//
// Runs, provider calls and attempts are not counted here: each run of the
// sweep already reported them through OnOutcome when the executor is wired
// with Configure. Zero counts add nothing, so an outcome appears once it
// has happened.
func (i *Instrumentation) RecordSweep(ctx context.Context, effect string, rep sweep.Report) {
	eff := AttrEffect.String(effect)
	add := func(outcome string, n int) {
		if n > 0 {
			i.candidates.Add(ctx, int64(n), metric.WithAttributeSet(attribute.NewSet(eff, AttrOutcome.String(outcome))))
		}
	}
	for _, o := range idempotency.Outcomes {
		n := rep.Outcomes[o]
		if o == idempotency.OutcomeInvalid {
			n += rep.Invalid
		}
		add(o.String(), n)
	}
	add(SweepUnstarted, rep.Unstarted)
	if rep.SavedByPreflight > 0 {
		i.saved.Add(ctx, int64(rep.SavedByPreflight), metric.WithAttributeSet(attribute.NewSet(eff)))
	}
}
