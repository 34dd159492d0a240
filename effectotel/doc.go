// Package effectotel reports effectonce runs, sweeps and stuck records to
// OpenTelemetry: a span per run and a handful of metrics with bounded
// attributes. It is the only package of the module that imports
// OpenTelemetry; the core (package idempotency) stays standard library only.
// Its name keeps it apart from go.opentelemetry.io/otel in the same file.
//
// Wire it once, where the executor is built:
//
//	inst, err := effectotel.New(nil) // the global TracerProvider and MeterProvider
//	exec, err := idempotency.NewExecutor(ledger, inst.Configure(&idempotency.Config{Logger: logger}))
//	_, err = inst.ObserveStuck(ledger) // stuck records per namespace, at each collection
//	// each cron tick:
//	rep, err := sweep.Run(ctx, exec, promo, src, nil)
//	inst.RecordSweep(ctx, promo.Name, rep)
//
// docs/observability.md in the repository lists every name and attribute,
// the cost of the stuck gauge, and alerts worth setting.
//
// # What is emitted
//
// Each run (idempotency.Run, directly or inside a sweep) ends in one span,
// "effectonce.run <effect>", created when the executor reports the run
// (idempotency.Config.OnOutcome) with the run's own start and end times, so
// it covers exactly the run's duration. Its attributes are the effect, the
// namespace, the outcome, the disposition, the number of provider calls, the
// attempt classes in order and whether the run reconciled; each attempt's
// evidence is a span event at the time the attempt ended.
//
// The metrics (their names are the Metric constants):
//
//	effectonce.runs                      counter    {run}        effect, outcome
//	effectonce.run.duration              histogram  s            effect, outcome
//	effectonce.provider.calls            counter    {call}       effect
//	effectonce.attempts                  counter    {attempt}    effect, attempt class
//	effectonce.reconciliations           counter    {run}        effect
//	effectonce.sweep.candidates          counter    {candidate}  effect, outcome
//	effectonce.sweep.saved_by_preflight  counter    {candidate}  effect
//	effectonce.stuck.records             gauge      {record}     namespace
//
// # What is never emitted
//
// No key (raw or HMAC), no input value, no result and no error message
// reaches a span or a metric: a provider's error can quote anything, and a
// key outside HMAC mode is made of business ids. A failed run's span says
// which outcome it had (status and error.type), nothing more; the ledger's
// evidence and the executor's log (which redacts HMAC keys) hold the rest.
// Attempt events carry the provider's request id (Stripe's Request-Id):
// the provider's, never the caller's data.
//
// # Cardinality
//
// Every metric attribute comes from a bounded set: effect names and
// namespaces are chosen in code, outcomes and attempt classes are enums
// (idempotency.Outcomes, the AttemptClass constants), plus "invalid" and
// "unstarted" for sweep candidates. Never build an effect's Name or a
// KeySpace's Namespace from data.
package effectotel
