package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

// Sizes of the sweep benchmarks.
const (
	sweepSize      = 10_000
	historyRows    = 2_000 // finished rows of an earlier period in both tables
	appliedPercent = 90    // BenchmarkPreflight: share already applied
	alreadyPool    = 2_000 // BenchmarkEffect/already_applied cycles over these keys
)

// BenchmarkEffect runs one effect through idempotency.Run and the pgguard
// store, against the zero-latency provider.
//
//   - outcome=first_time: a fresh key each iteration (claim, call,
//     complete): 2 statements, 1 provider call.
//   - outcome=already_applied: keys recorded as applied beforehand (by
//     set-based SQL): 1 statement, no provider call.
func BenchmarkEffect(b *testing.B) {
	b.Run("outcome=first_time", func(b *testing.B) {
		f := newFixture(b, 2)
		f.seedHistory(b, historyRows)
		f.warm(b, 1)
		// Warm the connection's statement cache outside the measurement.
		if _, err := idempotency.Run(f.ctx, f.exec, f.eff, grant{User: 1, Milestone: 1, Percent: 10}); err != nil {
			b.Fatal(err)
		}
		f.count.Reset()
		calls := f.prov.calls.Load()
		b.ReportAllocs()
		user := int64(1)
		for b.Loop() {
			user++
			res, err := idempotency.Run(f.ctx, f.exec, f.eff, grant{User: user, Milestone: 2, Percent: 10})
			if err != nil || res.Outcome != idempotency.OutcomeApplied {
				b.Fatalf("outcome %v: %v", res.Outcome, err)
			}
		}
		reportPerOp(b, f, calls)
	})
	b.Run("outcome=already_applied", func(b *testing.B) {
		f := newFixture(b, 2)
		f.seedHistory(b, historyRows)
		done := grants(alreadyPool, 3)
		f.seedApplied(b, done)
		f.analyze(b)
		f.warm(b, 1)
		if _, err := idempotency.Run(f.ctx, f.exec, f.eff, done[0]); err != nil {
			b.Fatal(err)
		}
		f.count.Reset()
		calls := f.prov.calls.Load()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			res, err := idempotency.Run(f.ctx, f.exec, f.eff, done[i%len(done)])
			if err != nil || res.Outcome != idempotency.OutcomeAlreadyApplied {
				b.Fatalf("outcome %v: %v", res.Outcome, err)
			}
			i++
		}
		reportPerOp(b, f, calls)
	})
}

// reportPerOp reports statements and provider calls per iteration since
// the counter was reset and the provider had made calls0 calls.
func reportPerOp(b *testing.B, f *fixture, calls0 int64) {
	b.ReportMetric(float64(f.count.Count())/float64(b.N), "statements/op")
	b.ReportMetric(float64(f.prov.calls.Load()-calls0)/float64(b.N), "provider-calls/op")
}

// BenchmarkExecutor is BenchmarkEffect on idempotency.MemStore: the core
// executor's own cost and allocations per effect (key, fingerprint,
// claim, call, result encoding, completion), with no database driver.
func BenchmarkExecutor(b *testing.B) {
	ctx := context.Background()
	newMem := func(b *testing.B) (*idempotency.Executor, *provider, *idempotency.Effect[grant, string]) {
		x, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
		if err != nil {
			b.Fatal(err)
		}
		p := &provider{}
		return x, p, loyaltyEffect(p)
	}
	b.Run("outcome=first_time", func(b *testing.B) {
		x, p, eff := newMem(b)
		b.ReportAllocs()
		user := int64(0)
		for b.Loop() {
			user++
			res, err := idempotency.Run(ctx, x, eff, grant{User: user, Milestone: 1, Percent: 10})
			if err != nil || res.Outcome != idempotency.OutcomeApplied {
				b.Fatalf("outcome %v: %v", res.Outcome, err)
			}
		}
		b.ReportMetric(float64(p.calls.Load())/float64(b.N), "provider-calls/op")
	})
	b.Run("outcome=already_applied", func(b *testing.B) {
		x, p, eff := newMem(b)
		done := grants(1024, 1)
		for _, g := range done {
			if _, err := idempotency.Run(ctx, x, eff, g); err != nil {
				b.Fatal(err)
			}
		}
		calls := p.calls.Load()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			res, err := idempotency.Run(ctx, x, eff, done[i%len(done)])
			if err != nil || res.Outcome != idempotency.OutcomeAlreadyApplied {
				b.Fatalf("outcome %v: %v", res.Outcome, err)
			}
			i++
		}
		b.ReportMetric(float64(p.calls.Load()-calls)/float64(b.N), "provider-calls/op")
	})
}

// The comparisons of issue 16 run at concurrency 8, with a zero-latency
// provider (the database and the library are all there is to measure) and
// with one whose every call takes 20 ms (a fast real API's round trip).
const (
	benchConc    = 8
	benchLatency = 20 * time.Millisecond
	freshN       = 4_000 // fresh candidates per iteration, zero latency
	freshSlowN   = 1_000 // ... with a 20 ms provider (the run is bounded by 8 / 20 ms)
	repeatN      = 4_000 // finished candidates per repeat iteration
)

// latencies are the provider latencies every comparison runs at, by name.
var latencies = []struct {
	name string
	d    time.Duration
	n    int
}{{"0ms", 0, freshN}, {"20ms", benchLatency, freshSlowN}}

// BenchmarkSweep sweeps fresh candidates at concurrency 8 through the
// library (sweep.Run with the pgguard store: one pre-flight, one ClaimMany
// per batch of 500, runs from their claims, completions in groups) and by
// hand (pre-flight SELECT, provider call, INSERT with a 23505 catch on the
// domain table's partial unique index, bounded by an errgroup). The two
// sides run back to back. The pool has one connection per worker; both
// tables hold the same history; nothing changes the server's settings
// (synchronous_commit stays as configured).
//
// One iteration is one whole sweep: run it with -benchtime=1x (the script
// does). Metrics: effects/s and statements per effect.
func BenchmarkSweep(b *testing.B) {
	for _, lat := range latencies {
		for _, impl := range []string{"library", "handwritten"} {
			b.Run(fmt.Sprintf("latency=%s/conc=%d/impl=%s", lat.name, benchConc, impl), func(b *testing.B) {
				f := newFixture(b, benchConc)
				run := f.librarySweep
				if impl == "handwritten" {
					run = f.handwrittenSweep
				}
				benchFresh(b, f, run, lat.n, lat.d)
			})
		}
	}
}

// BenchmarkRun runs candidates one idempotency.Run each, 8 at once, as
// queue consumers or webhook handlers do, against the hand-written pattern
// run the same way:
//
//   - new/impl=groupcommit: fresh keys, the executor's store wrapped in
//     idempotency.GroupCommit (MaxBatch 8, window 2 ms): the claims of the
//     8 runs in one statement, their completions in another.
//   - new/impl=plain: fresh keys, one claim and one completion per run.
//   - repeat/impl=plain: keys finished beforehand (set-based SQL): one
//     claim-or-fetch per run, no provider call; against the hand-written
//     pre-flight SELECT that finds the row.
//   - repeat/impl=groupcommit: the same through GroupCommit (diagnostic).
//
// Metric: effects/s (runs per second, whatever they did) and statements
// per effect.
func BenchmarkRun(b *testing.B) {
	for _, lat := range latencies {
		for _, impl := range []string{"groupcommit", "plain", "handwritten"} {
			if lat.d > 0 && impl == "plain" {
				continue // the 20 ms comparison is group commit's
			}
			b.Run(fmt.Sprintf("new/latency=%s/conc=%d/impl=%s", lat.name, benchConc, impl), func(b *testing.B) {
				f := newFixture(b, benchConc)
				benchFresh(b, f, f.runner(b, impl), lat.n, lat.d)
			})
		}
	}
	for _, impl := range []string{"plain", "groupcommit", "handwritten"} {
		b.Run(fmt.Sprintf("repeat/latency=0ms/conc=%d/impl=%s", benchConc, impl), func(b *testing.B) {
			f := newFixture(b, benchConc)
			run := f.runner(b, impl)
			f.seedHistory(b, historyRows)
			done := grants(repeatN, 2)
			f.seedApplied(b, done)
			f.seedDomain(b, done)
			f.analyze(b)
			f.warm(b, benchConc)
			if _, err := run(done[:4*benchConc], benchConc); err != nil {
				b.Fatal(err)
			}
			f.count.Reset()
			calls := f.prov.calls.Load()
			for b.Loop() {
				got, err := run(done, benchConc)
				if err != nil {
					b.Fatal(err)
				}
				if got.AlreadyApplied != repeatN {
					b.Fatalf("a repeat must find every candidate done: %s", got)
				}
			}
			if f.prov.calls.Load() != calls {
				b.Fatal("a repeat called the provider")
			}
			effects := float64(repeatN * b.N)
			b.ReportMetric(effects/b.Elapsed().Seconds(), "effects/s")
			b.ReportMetric(float64(f.count.Count())/effects, "statements/effect")
		})
	}
}

// benchFresh runs n fresh candidates per iteration through run at
// concurrency 8, against a provider taking latency per call, and reports
// effects/s and statements per effect.
func benchFresh(b *testing.B, f *fixture, run func([]grant, int) (sweepCounts, error), n int, latency time.Duration) {
	f.seedHistory(b, historyRows)
	f.warm(b, benchConc)
	// A small pass first warms every connection's statement cache.
	if _, err := run(grants(4*benchConc, 1), benchConc); err != nil {
		b.Fatal(err)
	}
	f.prov.latency = latency
	f.count.Reset()
	milestone := int64(100)
	for b.Loop() {
		milestone++ // fresh keys: the same work every iteration
		got, err := run(grants(n, milestone), benchConc)
		if err != nil {
			b.Fatal(err)
		}
		if got.Applied != n || got.ProviderCalls != n {
			b.Fatalf("did not apply every candidate once: %s", got)
		}
	}
	effects := float64(n * b.N)
	b.ReportMetric(effects/b.Elapsed().Seconds(), "effects/s")
	b.ReportMetric(float64(f.count.Count())/effects, "statements/effect")
}

// BenchmarkPreflight sweeps candidates of which 90% are already applied
// (recorded by set-based SQL before each iteration, outside the timer), at
// concurrency 8: the library's sweep (preflight=batch: one Lookup and one
// ClaimMany per batch of 500, completions in groups) against a
// per-candidate pre-flight (one Lookup query per candidate, then
// idempotency.Run for the missing ones): 10,000 candidates with the
// zero-latency provider, 4,000 with the 20 ms one.
//
// applied=100 (a diagnostic the script runs with BENCH_DIAGNOSTICS=1):
// nothing to do, so only the pre-flight is measured.
//
// Metrics: candidates/s and statements per sweep.
func BenchmarkPreflight(b *testing.B) {
	type shape struct {
		applied int
		lat     string
		d       time.Duration
		n       int
	}
	for _, sh := range []shape{{appliedPercent, "0ms", 0, sweepSize}, {appliedPercent, "20ms", benchLatency, 4_000}, {100, "0ms", 0, sweepSize}} {
		for _, mode := range []string{"batch", "per_candidate"} {
			b.Run(fmt.Sprintf("applied=%d/latency=%s/preflight=%s", sh.applied, sh.lat, mode), func(b *testing.B) {
				f := newFixture(b, benchConc)
				run := f.librarySweep
				if mode == "per_candidate" {
					run = f.perCandidateSweep
				}
				f.seedHistory(b, historyRows)
				f.warm(b, benchConc)
				if _, err := run(grants(4*benchConc, 1), benchConc); err != nil {
					b.Fatal(err)
				}
				f.prov.latency = sh.d
				milestone := int64(100)
				statements := 0
				for b.Loop() {
					b.StopTimer()
					milestone++ // fresh keys: the same work every iteration
					gs, done := preflightCandidates(milestone, sh.applied)
					gs, done = gs[:sh.n], done[:sh.n*sh.applied/100]
					f.seedApplied(b, done)
					f.analyze(b)
					before := f.count.Count()
					b.StartTimer()

					got, err := run(gs, benchConc)
					if err != nil {
						b.Fatal(err)
					}
					statements += f.count.Count() - before
					missing := len(gs) - len(done)
					if got.Applied != missing || got.AlreadyApplied != len(done) || got.ProviderCalls != missing {
						b.Fatalf("unexpected sweep: %s", got)
					}
				}
				b.ReportMetric(float64(sh.n*b.N)/b.Elapsed().Seconds(), "candidates/s")
				b.ReportMetric(float64(statements)/float64(b.N), "statements/op")
			})
		}
	}
}

// preflightCandidates returns the 10,000 candidates of one
// BenchmarkPreflight iteration and the given percentage of them to record as
// applied beforehand. The missing ones are spread evenly over the batches:
// with 90%, every user whose id is a multiple of 10. The share left to do
// must divide 100 (10%, 20%, 50%) or be nothing.
func preflightCandidates(milestone int64, appliedPct int) (all, done []grant) {
	all = grants(sweepSize, milestone)
	skip := int64(100 / max(100-appliedPct, 1))
	for _, g := range all {
		if appliedPct == 100 || g.User%skip != 0 {
			done = append(done, g)
		}
	}
	return all, done
}
