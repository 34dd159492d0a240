package effectotel_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/effectonce/effectonce/effectotel"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

func TestSweepWithKnownOutcomesReadsBackExactCounts(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, nil)
	store := idempotency.NewMemStore(nil)
	p := &provider{}
	eff := p.effect()

	// An earlier tick applied three members, without instrumentation.
	plain, err := idempotency.NewExecutor(store, nil)
	require.NoError(t, err)
	var all []member
	for i := range 3 {
		m := member{Email: fmt.Sprintf("alice-%d@example.com", i)}
		_, err := idempotency.Run(ctx, plain, eff, m)
		require.NoError(t, err)
		all = append(all, m)
	}
	// This tick: the three again (pre-flight: already applied), five new
	// ones, a refusal, a 429, a timeout (parked in doubt: the effect has no
	// Find) and a member with no email (invalid key).
	for i := range 5 {
		all = append(all, member{Email: fmt.Sprintf("bob-%d@example.com", i)})
	}
	all = append(all,
		member{Email: "carol@example.com", Fate: "refuse"},
		member{Email: "dave@example.com", Fate: "throttle"},
		member{Email: "erin@example.com", Fate: "timeout"},
		member{Email: ""},
	)
	var evs events
	exec, err := idempotency.NewExecutor(store, h.inst.Configure(&idempotency.Config{OnOutcome: evs.record}))
	require.NoError(t, err)
	_, err = h.inst.ObserveStuck(store, "loyalty.promo", "mail.welcome")
	require.NoError(t, err)

	rep, err := sweep.Run(ctx, exec, eff, sweep.Slice(all), nil)
	require.NoError(t, err)
	h.inst.RecordSweep(ctx, eff.Name, rep)
	require.Equal(t, "candidates=12 applied=5 already_applied=3 retryable=1 permanent=1 needs_reconciliation=1 invalid=1 "+
		"provider_calls=8 saved_by_preflight=3 reconciled=0 lookups=1 batches=1 failures=4", rep.String())

	rm := h.collect(t)
	const e = "effect=loyalty.promo"
	require.Equal(t, map[string]int64{
		e + ",outcome=applied":              5,
		e + ",outcome=permanent":            1,
		e + ",outcome=retryable":            1,
		e + ",outcome=needs_reconciliation": 1,
	}, counts(t, rm, effectotel.MetricRuns), "one run per candidate the pre-flight left to the claim")
	n, sum := histogram(t, rm, effectotel.MetricRunDuration)
	require.Equal(t, map[string]uint64{
		e + ",outcome=applied":              5,
		e + ",outcome=permanent":            1,
		e + ",outcome=retryable":            1,
		e + ",outcome=needs_reconciliation": 1,
	}, n)
	want := map[string]float64{}
	for _, ev := range evs.all() {
		want[e+",outcome="+ev.Outcome.String()] += ev.Duration.Seconds()
	}
	require.Len(t, sum, len(want))
	for k, v := range want {
		require.InDelta(t, v, sum[k], 1e-9, "duration sum of %s, in seconds", k)
	}
	require.Equal(t, map[string]int64{e: 8}, counts(t, rm, effectotel.MetricProviderCalls))
	require.Equal(t, map[string]int64{
		"attempt.class=done," + e:      5,
		"attempt.class=refused," + e:   1,
		"attempt.class=not_acted," + e: 1,
		"attempt.class=unknown," + e:   1,
	}, counts(t, rm, effectotel.MetricAttempts))
	require.Empty(t, counts(t, rm, effectotel.MetricReconciliations))
	require.Equal(t, map[string]int64{
		e + ",outcome=already_applied":      3,
		e + ",outcome=applied":              5,
		e + ",outcome=permanent":            1,
		e + ",outcome=retryable":            1,
		e + ",outcome=needs_reconciliation": 1,
		e + ",outcome=invalid":              1,
	}, counts(t, rm, effectotel.MetricSweepCandidates), "the outcomes sum to the report's 12 candidates")
	require.Equal(t, map[string]int64{e: 3}, counts(t, rm, effectotel.MetricSweepSaved))
	require.Equal(t, map[string]int64{"namespace=loyalty.promo": 1, "namespace=mail.welcome": 0},
		counts(t, rm, effectotel.MetricStuckRecords), "the timeout left one record in doubt")

	// One span per run, each saying what the run did.
	runs := h.spansNamed(effectotel.SpanRun)
	require.Len(t, runs, 8)
	byOutcome := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range runs {
		require.Equal(t, "effectonce.run loyalty.promo", s.Name())
		require.Equal(t, trace.SpanKindInternal, s.SpanKind())
		require.Equal(t, "loyalty.promo", attr(t, s.Attributes(), effectotel.AttrNamespace).AsString())
		o := attr(t, s.Attributes(), effectotel.AttrOutcome).AsString()
		byOutcome[o] = append(byOutcome[o], s)
	}
	require.Len(t, byOutcome["applied"], 5)
	for _, s := range byOutcome["applied"] {
		a := s.Attributes()
		require.Equal(t, []string{"done"}, attr(t, a, effectotel.AttrAttemptClasses).AsStringSlice())
		require.Equal(t, int64(1), attr(t, a, effectotel.AttrCalls).AsInt64())
		require.Equal(t, "ack", attr(t, a, effectotel.AttrDisposition).AsString())
		require.False(t, hasAttr(a, effectotel.AttrErrorType))
		require.Equal(t, codes.Unset, s.Status().Code)
		require.Len(t, s.Events(), 1)
		ev := s.Events()[0]
		require.Equal(t, effectotel.EventAttempt, ev.Name)
		require.Equal(t, int64(200), attr(t, ev.Attributes, effectotel.AttrStatusCode).AsInt64())
		require.Equal(t, "done", attr(t, ev.Attributes, effectotel.AttrAttemptClass).AsString())
		require.Equal(t, int64(1), attr(t, ev.Attributes, effectotel.AttrAttemptNumber).AsInt64())
		require.Equal(t, int64(1), attr(t, ev.Attributes, effectotel.AttrGeneration).AsInt64())
	}
	for outcome, want := range map[string]struct {
		class, disposition string
		status             int64
	}{
		"permanent":            {"refused", "dead_letter", 402},
		"retryable":            {"not_acted", "retry", 429},
		"needs_reconciliation": {"unknown", "dead_letter", 0},
	} {
		require.Len(t, byOutcome[outcome], 1, outcome)
		s := byOutcome[outcome][0]
		a := s.Attributes()
		require.Equal(t, []string{want.class}, attr(t, a, effectotel.AttrAttemptClasses).AsStringSlice(), outcome)
		require.Equal(t, want.disposition, attr(t, a, effectotel.AttrDisposition).AsString(), outcome)
		require.Equal(t, outcome, attr(t, a, effectotel.AttrErrorType).AsString())
		require.Equal(t, sdktrace.Status{Code: codes.Error, Description: outcome}, s.Status())
		require.Len(t, s.Events(), 1, outcome)
		require.Equal(t, want.status != 0, hasAttr(s.Events()[0].Attributes, effectotel.AttrStatusCode), outcome)
		if want.status != 0 {
			require.Equal(t, want.status, attr(t, s.Events()[0].Attributes, effectotel.AttrStatusCode).AsInt64(), outcome)
		}
	}

	// No key, no email, no provider message anywhere.
	forbidden := []string{"@example.com", "alice", "bob-", "carol", "dave", "erin", "email=", "loyalty.promo:v1:",
		"declined", "429 for", "timeout creating", "promo_for_"}
	for _, m := range all[:len(all)-1] {
		k, _, err := eff.Identity(m)
		require.NoError(t, err)
		forbidden = append(forbidden, k.String())
	}
	h.requireNoLeak(t, rm, forbidden...)
}

func TestRunSpanCoversTheRunExactly(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, nil)
	var evs events
	exec, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), h.inst.Configure(&idempotency.Config{OnOutcome: evs.record}))
	require.NoError(t, err)
	eff := (&provider{}).effect()

	parentCtx, parent := h.tp.Tracer("test").Start(ctx, "delivery")
	before := time.Now()
	_, err = idempotency.Run(parentCtx, exec, eff, member{Email: "alice@example.com"})
	after := time.Now()
	parent.End()
	require.NoError(t, err)

	runs := h.spansNamed(effectotel.SpanRun)
	require.Len(t, runs, 1)
	s := runs[0]
	ev := evs.all()[0]
	require.Equal(t, ev.Duration, s.EndTime().Sub(s.StartTime()), "the span lasts exactly the run's Duration")
	require.False(t, s.StartTime().Before(before), "the span starts inside Run")
	require.False(t, s.EndTime().After(after), "the span ends inside Run")
	require.Equal(t, parent.SpanContext().TraceID(), s.SpanContext().TraceID())
	require.Equal(t, parent.SpanContext().SpanID(), s.Parent().SpanID(), "a child of the caller's span")
	require.Len(t, s.Events(), 1)
	require.True(t, s.Events()[0].Time.Equal(ev.Attempts[0].At), "the attempt's event is at the attempt's end")
	require.Equal(t, "req_1", attr(t, s.Events()[0].Attributes, effectotel.AttrRequestID).AsString())

	// The duration's exemplar points at the run span.
	m, ok := metricNamed(h.collect(t), effectotel.MetricRunDuration)
	require.True(t, ok)
	dps := m.Data.(metricdata.Histogram[float64]).DataPoints
	require.Len(t, dps, 1)
	require.Len(t, dps[0].Exemplars, 1)
	sid := s.SpanContext().SpanID()
	require.Equal(t, sid[:], dps[0].Exemplars[0].SpanID)
	require.Equal(t, ev.Duration.Seconds(), dps[0].Exemplars[0].Value)

	// The repeat: already applied, no call, no attempt.
	_, err = idempotency.Run(ctx, exec, eff, member{Email: "alice@example.com"})
	require.NoError(t, err)
	runs = h.spansNamed(effectotel.SpanRun)
	require.Len(t, runs, 2)
	a := runs[1].Attributes()
	require.Equal(t, "already_applied", attr(t, a, effectotel.AttrOutcome).AsString())
	require.Equal(t, int64(0), attr(t, a, effectotel.AttrCalls).AsInt64())
	require.Empty(t, attr(t, a, effectotel.AttrAttemptClasses).AsStringSlice())
	require.Empty(t, runs[1].Events())
	require.False(t, runs[1].Parent().IsValid(), "no span in ctx: a root span")
}

func TestAttemptSpansWrapEachAttemptAndItsMiddleware(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, &effectotel.Config{AttemptSpans: true})
	calls := 0
	keys := idempotency.KeySpace{Namespace: "mail.welcome"}
	var inCall []string // the span the provider's client would nest under
	eff := &idempotency.Effect[string, string]{
		Name: "mail.welcome",
		Key:  func(u string) (idempotency.Key, error) { return keys.Key(idempotency.Str("user", u)) },
		Call: func(ctx context.Context, _ idempotency.Key, u string) (string, error) {
			inCall = append(inCall, trace.SpanFromContext(ctx).(sdktrace.ReadOnlySpan).Name())
			calls++
			if calls == 1 {
				return "", idempotency.NotActed(errors.New("429"), 0)
			}
			return "msg_1", nil
		},
	}
	var inMiddleware []string
	mine := func(ctx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
		inMiddleware = append(inMiddleware, trace.SpanFromContext(ctx).(sdktrace.ReadOnlySpan).Name())
		return next(ctx)
	}
	exec, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), h.inst.Configure(&idempotency.Config{
		Middleware: []idempotency.Middleware{mine},
		Retry:      idempotency.RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Nanosecond},
	}))
	require.NoError(t, err)

	parentCtx, parent := h.tp.Tracer("test").Start(ctx, "delivery")
	res, err := idempotency.Run(parentCtx, exec, eff, "u_1")
	parent.End()
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)

	require.Equal(t, []string{"effectonce.attempt mail.welcome", "effectonce.attempt mail.welcome"}, inMiddleware,
		"the attempt span wraps the caller's middleware")
	require.Equal(t, inMiddleware, inCall, "the provider call runs under the attempt span")
	attempts := h.spansNamed(effectotel.SpanAttempt)
	require.Len(t, attempts, 2)
	for n, want := range []struct {
		class  string
		status codes.Code
	}{{"not_acted", codes.Error}, {"done", codes.Unset}} {
		s := attempts[n]
		a := s.Attributes()
		require.Equal(t, int64(n+1), attr(t, a, effectotel.AttrAttemptNumber).AsInt64())
		require.Equal(t, want.class, attr(t, a, effectotel.AttrAttemptClass).AsString())
		require.Equal(t, int64(1), attr(t, a, effectotel.AttrGeneration).AsInt64())
		require.Equal(t, "mail.welcome", attr(t, a, effectotel.AttrEffect).AsString())
		require.Equal(t, "mail.welcome", attr(t, a, effectotel.AttrNamespace).AsString())
		require.Equal(t, want.status, s.Status().Code)
		require.Equal(t, parent.SpanContext().SpanID(), s.Parent().SpanID(), "attempt spans are children of the caller's span")
	}
	runs := h.spansNamed(effectotel.SpanRun)
	require.Len(t, runs, 1)
	require.Equal(t, parent.SpanContext().SpanID(), runs[0].Parent().SpanID(), "the run span is their sibling")
	require.Equal(t, []string{"not_acted", "done"}, attr(t, runs[0].Attributes(), effectotel.AttrAttemptClasses).AsStringSlice())
	require.Equal(t, int64(2), attr(t, runs[0].Attributes(), effectotel.AttrCalls).AsInt64())
	require.Len(t, runs[0].Events(), 2)
}

func TestConfigureChainsTheCallersHooksAndLeavesItsConfigAlone(t *testing.T) {
	h := newHarness(t, nil)
	var evs events
	mine := func(ctx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
		return next(ctx)
	}
	cfg := &idempotency.Config{OnOutcome: evs.record, Middleware: []idempotency.Middleware{mine}, Lease: time.Minute}
	got := h.inst.Configure(cfg)
	require.NotSame(t, cfg, got)
	require.Len(t, got.Middleware, 1, "no attempt spans unless asked")
	require.Equal(t, time.Minute, got.Lease)
	require.Len(t, cfg.Middleware, 1)

	exec, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), got)
	require.NoError(t, err)
	eff := (&provider{}).effect()
	for range 2 {
		_, err := idempotency.Run(context.Background(), exec, eff, member{Email: "alice@example.com"})
		require.NoError(t, err)
	}
	require.Len(t, evs.all(), 2, "the caller's OnOutcome still sees every run")
	require.Equal(t, map[string]int64{
		"effect=loyalty.promo,outcome=applied":         1,
		"effect=loyalty.promo,outcome=already_applied": 1,
	}, counts(t, h.collect(t), effectotel.MetricRuns))

	withSpans := newHarness(t, &effectotel.Config{AttemptSpans: true}).inst.Configure(cfg)
	require.Len(t, withSpans.Middleware, 2)
	require.Len(t, cfg.Middleware, 1)

	bare := h.inst.Configure(nil)
	require.NotNil(t, bare.OnOutcome)
	bare.OnOutcome(context.Background(), idempotency.Event{Effect: "x", Outcome: idempotency.OutcomeInvalid})
	require.Equal(t, int64(1), counts(t, h.collect(t), effectotel.MetricRuns)["effect=x,outcome=invalid"])
}

func TestRecordSweepCountsInvalidAndUnstartedCandidates(t *testing.T) {
	h := newHarness(t, nil)
	h.inst.RecordSweep(context.Background(), "orders.refund", sweep.Report{
		Candidates: 10,
		Outcomes: map[idempotency.Outcome]int{
			idempotency.OutcomeApplied: 4, idempotency.OutcomeInFlight: 1, idempotency.OutcomeNotDue: 0,
		},
		Invalid: 2, Unstarted: 3, SavedByPreflight: 1,
	})
	h.inst.RecordSweep(context.Background(), "orders.refund", sweep.Report{
		Candidates: 1, Outcomes: map[idempotency.Outcome]int{idempotency.OutcomeApplied: 1},
	})
	rm := h.collect(t)
	require.Equal(t, map[string]int64{
		"effect=orders.refund,outcome=applied":   5,
		"effect=orders.refund,outcome=in_flight": 1,
		"effect=orders.refund,outcome=invalid":   2,
		"effect=orders.refund,outcome=unstarted": 3,
	}, counts(t, rm, effectotel.MetricSweepCandidates), "counters add up across sweeps; zero counts add no series")
	require.Equal(t, map[string]int64{"effect=orders.refund": 1}, counts(t, rm, effectotel.MetricSweepSaved))
	require.Empty(t, counts(t, rm, effectotel.MetricRuns), "runs come from OnOutcome only")
}

func TestInstrumentsHaveTheirDocumentedUnitsAndKinds(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.inst.OnOutcome(ctx, idempotency.Event{Effect: "x", Outcome: idempotency.OutcomeApplied, Calls: 1, Reconciled: true,
		Attempts: []idempotency.Attempt{{Class: idempotency.AttemptDone}}, Duration: 1500 * time.Millisecond})
	h.inst.RecordSweep(ctx, "x", sweep.Report{Candidates: 1, Outcomes: map[idempotency.Outcome]int{idempotency.OutcomeAlreadyApplied: 1}, SavedByPreflight: 1})
	_, err := h.inst.ObserveStuck(idempotency.NewMemStore(nil), "x")
	require.NoError(t, err)
	rm := h.collect(t)
	for name, want := range map[string]struct {
		unit string
		kind string
	}{
		effectotel.MetricRuns:            {"{run}", "counter"},
		effectotel.MetricRunDuration:     {"s", "histogram"},
		effectotel.MetricProviderCalls:   {"{call}", "counter"},
		effectotel.MetricAttempts:        {"{attempt}", "counter"},
		effectotel.MetricReconciliations: {"{run}", "counter"},
		effectotel.MetricSweepCandidates: {"{candidate}", "counter"},
		effectotel.MetricSweepSaved:      {"{candidate}", "counter"},
		effectotel.MetricStuckRecords:    {"{record}", "gauge"},
	} {
		m, ok := metricNamed(rm, name)
		require.True(t, ok, name)
		require.Equal(t, want.unit, m.Unit, name)
		kind := fmt.Sprintf("%T", m.Data)
		switch want.kind {
		case "counter":
			require.Equal(t, "metricdata.Sum[int64]", kind, name)
		case "histogram":
			require.Equal(t, "metricdata.Histogram[float64]", kind, name)
		case "gauge":
			require.Equal(t, "metricdata.Gauge[int64]", kind, name)
		}
	}
	require.Equal(t, map[string]int64{"effect=x": 1}, counts(t, rm, effectotel.MetricReconciliations))
	n, sum := histogram(t, rm, effectotel.MetricRunDuration)
	require.Equal(t, map[string]uint64{"effect=x,outcome=applied": 1}, n)
	require.Equal(t, map[string]float64{"effect=x,outcome=applied": 1.5}, sum, "seconds")
	m, _ := metricNamed(rm, effectotel.MetricRunDuration)
	require.Equal(t, effectotel.DurationBuckets, m.Data.(metricdata.Histogram[float64]).DataPoints[0].Bounds, "the advisory buckets")
}

func TestNewRejectsANegativeStuckLimit(t *testing.T) {
	_, err := effectotel.New(&effectotel.Config{StuckLimit: -1})
	require.ErrorIs(t, err, effectotel.ErrInvalidConfig)
	inst, err := effectotel.New(nil)
	require.NoError(t, err, "nil means the global providers")
	inst.OnOutcome(context.Background(), idempotency.Event{Effect: "x", Outcome: idempotency.OutcomeApplied})
}
