package effectotel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/effectonce/effectonce/idempotency"
)

// ScopeName is the instrumentation scope of every span and instrument.
const ScopeName = "github.com/effectonce/effectonce/effectotel"

// Instrument names.
const (
	MetricRuns            = "effectonce.runs"
	MetricRunDuration     = "effectonce.run.duration"
	MetricProviderCalls   = "effectonce.provider.calls"
	MetricAttempts        = "effectonce.attempts"
	MetricReconciliations = "effectonce.reconciliations"
	MetricSweepCandidates = "effectonce.sweep.candidates"
	MetricSweepSaved      = "effectonce.sweep.saved_by_preflight"
	MetricStuckRecords    = "effectonce.stuck.records"
)

// Span and event names. A span's name is followed by a space and the
// effect's name.
const (
	SpanRun      = "effectonce.run"
	SpanAttempt  = "effectonce.attempt"
	EventAttempt = "effectonce.attempt"
)

// Attribute keys. Metrics carry only AttrEffect, AttrNamespace, AttrOutcome
// and AttrAttemptClass.
const (
	AttrEffect         attribute.Key = "effectonce.effect"
	AttrNamespace      attribute.Key = "effectonce.namespace"
	AttrOutcome        attribute.Key = "effectonce.outcome"
	AttrDisposition    attribute.Key = "effectonce.disposition"
	AttrCalls          attribute.Key = "effectonce.calls"
	AttrAttemptClasses attribute.Key = "effectonce.attempt.classes"
	AttrReconciled     attribute.Key = "effectonce.reconciled"
	AttrAttemptNumber  attribute.Key = "effectonce.attempt.number"
	AttrAttemptClass   attribute.Key = "effectonce.attempt.class"
	AttrGeneration     attribute.Key = "effectonce.key.generation"
	AttrReplayed       attribute.Key = "effectonce.attempt.replayed"
	AttrRequestID      attribute.Key = "effectonce.provider.request_id"
	AttrStatusCode     attribute.Key = "http.response.status_code"
	AttrErrorType      attribute.Key = "error.type"
)

// DurationBuckets are the advisory bucket boundaries of
// effectonce.run.duration, in seconds: from a ledger hit (milliseconds) to
// a provider call retried in-run (tens of seconds). Override them with an
// SDK View.
var DurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60}

// ErrInvalidConfig is returned by New for a Config it cannot use.
var ErrInvalidConfig = errors.New("effectotel: invalid config")

// DefaultStuckLimit is the default of Config.StuckLimit.
const DefaultStuckLimit = 1000

// Config configures an Instrumentation. The zero value (or nil) reports to
// the global providers.
type Config struct {
	// TracerProvider makes the run spans. Nil means otel.GetTracerProvider()
	// (which follows a provider set later with otel.SetTracerProvider).
	TracerProvider trace.TracerProvider
	// MeterProvider makes the instruments. Nil means
	// otel.GetMeterProvider() (which follows a provider set later).
	MeterProvider metric.MeterProvider
	// AttemptSpans makes Configure install Middleware: one more span per
	// provider attempt (see Middleware). False (the default) keeps to one
	// span per run, whose events already describe each attempt.
	AttemptSpans bool
	// StuckLimit bounds the records ObserveStuck reads at each collection
	// from a store that cannot count them (StuckCounter): one ListStuck
	// with this limit, counted by namespace. Zero means DefaultStuckLimit
	// (1000).
	StuckLimit int
}

// Instrumentation records runs, attempts, sweeps and stuck records. It is
// safe for concurrent use; build one per process and share it.
type Instrumentation struct {
	tracer       trace.Tracer
	meter        metric.Meter
	attemptSpans bool
	stuckLimit   int

	runs       metric.Int64Counter
	duration   metric.Float64Histogram
	calls      metric.Int64Counter
	attempts   metric.Int64Counter
	reconciled metric.Int64Counter
	candidates metric.Int64Counter
	saved      metric.Int64Counter
	stuck      metric.Int64ObservableGauge
}

// New creates the instruments on cfg's providers. cfg may be nil. A
// negative StuckLimit is ErrInvalidConfig.
func New(cfg *Config) (*Instrumentation, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.StuckLimit < 0 {
		return nil, fmt.Errorf("%w: negative StuckLimit %d", ErrInvalidConfig, c.StuckLimit)
	}
	if c.StuckLimit == 0 {
		c.StuckLimit = DefaultStuckLimit
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	i := &Instrumentation{
		tracer:       c.TracerProvider.Tracer(ScopeName),
		meter:        c.MeterProvider.Meter(ScopeName),
		attemptSpans: c.AttemptSpans,
		stuckLimit:   c.StuckLimit,
	}
	m := i.meter
	var err error
	counter := func(name, unit, desc string) metric.Int64Counter {
		if err != nil {
			return nil
		}
		var ctr metric.Int64Counter
		ctr, err = m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		return ctr
	}
	i.runs = counter(MetricRuns, "{run}", "Runs of an effect, by outcome.")
	i.calls = counter(MetricProviderCalls, "{call}", "Provider calls made by runs, in-run retries included.")
	i.attempts = counter(MetricAttempts, "{attempt}", "Provider attempts, by what each proves about the provider.")
	i.reconciled = counter(MetricReconciliations, "{run}", "Runs that asked the provider about a record in doubt.")
	i.candidates = counter(MetricSweepCandidates, "{candidate}", "Sweep candidates, by outcome (invalid and unstarted included).")
	i.saved = counter(MetricSweepSaved, "{candidate}", "Sweep candidates settled by the batch pre-flight, with no claim and no provider call.")
	if err != nil {
		return nil, fmt.Errorf("effectotel: %w", err)
	}
	i.duration, err = m.Float64Histogram(MetricRunDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of a run, from the key to the last store statement."),
		metric.WithExplicitBucketBoundaries(DurationBuckets...))
	if err != nil {
		return nil, fmt.Errorf("effectotel: %w", err)
	}
	i.stuck, err = m.Int64ObservableGauge(MetricStuckRecords, metric.WithUnit("{record}"),
		metric.WithDescription("Records nobody will finish on their own (idempotency.Stuck): in doubt, held past their lease, unknown past the provider's window."))
	if err != nil {
		return nil, fmt.Errorf("effectotel: %w", err)
	}
	return i, nil
}

// Configure returns a copy of cfg (nil means the zero Config) wired to i:
// its OnOutcome records each run and then calls cfg's own OnOutcome, if
// any; with Config.AttemptSpans, Middleware runs first, around cfg's
// middleware. cfg is unchanged.
func (i *Instrumentation) Configure(cfg *idempotency.Config) *idempotency.Config {
	var c idempotency.Config
	if cfg != nil {
		c = *cfg
	}
	next := c.OnOutcome
	c.OnOutcome = func(ctx context.Context, ev idempotency.Event) {
		i.OnOutcome(ctx, ev)
		if next != nil {
			next(ctx, ev)
		}
	}
	if i.attemptSpans {
		c.Middleware = append([]idempotency.Middleware{i.Middleware()}, c.Middleware...)
	}
	return &c
}

// OnOutcome records one finished run: its span and its metrics. It has the
// signature of idempotency.Config.OnOutcome (Configure installs it).
//
// The span is created now, as the executor reports the run, with the run's
// start (now minus ev.Duration) as its start time and now as its end: it
// covers exactly the run's duration, as a child of the span in ctx (the
// caller's). It carries no key, input, result or error message.
func (i *Instrumentation) OnOutcome(ctx context.Context, ev idempotency.Event) {
	end := time.Now()
	start := end.Add(-ev.Duration)
	outcome := ev.Outcome.String()
	failed := failure(ev.Outcome)

	classes := make([]string, len(ev.Attempts))
	for n, a := range ev.Attempts {
		classes[n] = string(a.Class)
	}
	attrs := []attribute.KeyValue{
		AttrEffect.String(ev.Effect),
		AttrNamespace.String(ev.Namespace),
		AttrOutcome.String(outcome),
		AttrDisposition.String(idempotency.DispositionOf(ev.Outcome, 0).Action.String()),
		AttrCalls.Int(ev.Calls),
		AttrAttemptClasses.StringSlice(classes),
		AttrReconciled.Bool(ev.Reconciled),
	}
	if failed {
		attrs = append(attrs, AttrErrorType.String(outcome))
	}
	spanCtx, span := i.tracer.Start(ctx, spanName(SpanRun, ev.Effect), trace.WithTimestamp(start),
		trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
	if span.IsRecording() {
		for n, a := range ev.Attempts {
			span.AddEvent(EventAttempt, trace.WithTimestamp(a.At), trace.WithAttributes(attemptEvent(n+1, a)...))
		}
		if failed {
			span.SetStatus(codes.Error, outcome)
		}
	}

	// Measured under the run span, so that exemplars point at it.
	set := metric.WithAttributeSet(attribute.NewSet(AttrEffect.String(ev.Effect), AttrOutcome.String(outcome)))
	i.runs.Add(spanCtx, 1, set)
	i.duration.Record(spanCtx, ev.Duration.Seconds(), set)
	effect := metric.WithAttributeSet(attribute.NewSet(AttrEffect.String(ev.Effect)))
	i.calls.Add(spanCtx, int64(ev.Calls), effect)
	if ev.Reconciled {
		i.reconciled.Add(spanCtx, 1, effect)
	}
	for _, c := range classes {
		i.attempts.Add(spanCtx, 1, metric.WithAttributeSet(attribute.NewSet(AttrEffect.String(ev.Effect), AttrAttemptClass.String(c))))
	}
	span.End(trace.WithTimestamp(end))
}

// failure reports whether a run with outcome o failed: the intent is not
// done and waiting alone will not do it. In flight and not due are not
// failures.
func failure(o idempotency.Outcome) bool {
	return !o.Good() && o != idempotency.OutcomeInFlight && o != idempotency.OutcomeNotDue
}

func spanName(prefix, effect string) string {
	if effect == "" {
		return prefix
	}
	return prefix + " " + effect
}

// attemptEvent describes attempt number n from its evidence, without its
// error message.
func attemptEvent(n int, a idempotency.Attempt) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		AttrAttemptNumber.Int(n),
		AttrAttemptClass.String(string(a.Class)),
		AttrGeneration.Int(max(a.Generation, 1)),
	}
	if a.Status != 0 {
		attrs = append(attrs, AttrStatusCode.Int(a.Status))
	}
	if a.Replayed {
		attrs = append(attrs, AttrReplayed.Bool(true))
	}
	if a.RequestID != "" {
		attrs = append(attrs, AttrRequestID.String(a.RequestID))
	}
	return attrs
}

// Middleware returns an executor middleware that wraps each provider
// attempt in a span, "effectonce.attempt <effect>", carrying the effect,
// the namespace, the attempt's number, its provider-key generation and,
// once it returns, the class of its outcome (as the executor classifies
// the attempt's error); a class other than done or skipped sets the
// span's status to Error. The attempt's context carries the span, so a
// provider client instrumented with OpenTelemetry (otelhttp) nests its
// own spans under it.
//
// The executor reports a run only when it ends, so the run span (OnOutcome)
// is created after its attempts: attempt spans are its siblings, children
// of the span in the run's context, not its children. Install it first in
// idempotency.Config.Middleware (Configure does, with
// Config.AttemptSpans) so that it covers the other middleware, a sweep's
// rate-limit wait included.
func (i *Instrumentation) Middleware() idempotency.Middleware {
	return func(ctx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
		ctx, span := i.tracer.Start(ctx, spanName(SpanAttempt, a.Effect), trace.WithSpanKind(trace.SpanKindInternal),
			trace.WithAttributes(
				AttrEffect.String(a.Effect),
				AttrNamespace.String(a.Key.Namespace()),
				AttrAttemptNumber.Int(a.Number),
				AttrGeneration.Int(a.Key.Generation()),
			))
		defer span.End()
		err := next(ctx)
		class := classOf(err)
		span.SetAttributes(AttrAttemptClass.String(string(class)))
		if class != idempotency.AttemptDone && class != idempotency.AttemptSkipped {
			span.SetStatus(codes.Error, string(class))
		}
		return err
	}
}

// classOf is the evidence class the executor gives an attempt that
// returned err.
func classOf(err error) idempotency.AttemptClass {
	switch {
	case err == nil:
		return idempotency.AttemptDone
	case errors.Is(err, idempotency.ErrSkip):
		return idempotency.AttemptSkipped
	}
	switch c, _ := idempotency.Classify(err); c {
	case idempotency.ClassNotActed:
		return idempotency.AttemptNotActed
	case idempotency.ClassPermanent:
		return idempotency.AttemptRefused
	case idempotency.ClassMismatch:
		return idempotency.AttemptMismatch
	}
	return idempotency.AttemptUnknown
}
