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

// sweepConcurrencies are the concurrencies BenchmarkSweep compares at.
var sweepConcurrencies = []int{1, 8, 32}

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

// BenchmarkSweep sweeps 10,000 candidates with fresh keys per iteration,
// at each concurrency, through the library (sweep.Run with the pgguard
// store) and by hand (pre-flight SELECT, provider call, INSERT with a
// 23505 catch on the domain table's partial unique index). The two sides
// of each concurrency run back to back. The pool has one connection per
// worker; both tables hold the same history; nothing changes the server's
// settings (synchronous_commit stays as configured).
//
// One iteration is one whole sweep: run it with -benchtime=1x (the
// script does). Metrics: effects/s and statements per effect.
func BenchmarkSweep(b *testing.B) {
	for _, conc := range sweepConcurrencies {
		for _, impl := range []string{"library", "handwritten"} {
			b.Run(fmt.Sprintf("conc=%d/impl=%s", conc, impl), func(b *testing.B) {
				benchSweep(b, impl, conc, sweepSize, 0)
			})
		}
	}
}

// BenchmarkSweepWithLatency is BenchmarkSweep at concurrency 8 with a
// provider whose every call takes 20 ms, a fast real API's round trip, over
// 1,000 candidates per iteration: how much of the claim's extra write is
// left once the provider costs something. A diagnostic (bench.sh runs it
// with BENCH_DIAGNOSTICS=1); issue 9's figures use the zero-latency fake.
func BenchmarkSweepWithLatency(b *testing.B) {
	for _, impl := range []string{"library", "handwritten"} {
		b.Run("latency=20ms/conc=8/impl="+impl, func(b *testing.B) {
			benchSweep(b, impl, 8, 1000, 20*time.Millisecond)
		})
	}
}

// benchSweep runs one sweep of n fresh candidates per iteration through
// impl ("library" or "handwritten") at concurrency conc, against a
// provider taking latency per call, and reports effects/s and statements
// per effect.
func benchSweep(b *testing.B, impl string, conc, n int, latency time.Duration) {
	f := newFixture(b, conc)
	run := f.librarySweep
	if impl == "handwritten" {
		run = f.handwrittenSweep
	}
	f.seedHistory(b, historyRows)
	f.warm(b, conc)
	// A small sweep first warms every connection's statement cache.
	if _, err := run(grants(4*conc, 1), conc); err != nil {
		b.Fatal(err)
	}
	f.prov.latency = latency
	f.count.Reset()
	milestone := int64(100)
	for b.Loop() {
		milestone++ // fresh keys: the same work every iteration
		got, err := run(grants(n, milestone), conc)
		if err != nil {
			b.Fatal(err)
		}
		if got.Applied != n || got.ProviderCalls != n {
			b.Fatalf("sweep did not apply every candidate once: %s", got)
		}
	}
	effects := float64(n * b.N)
	b.ReportMetric(effects/b.Elapsed().Seconds(), "effects/s")
	b.ReportMetric(float64(f.count.Count())/effects, "statements/effect")
}

// BenchmarkPreflight sweeps 10,000 candidates of which a share is already
// applied (recorded by set-based SQL before each iteration, outside the
// timer), at concurrency 8: the library's batch pre-flight (sweep.Run, one
// Lookup query per batch of 500) against a per-candidate pre-flight (one
// Lookup query per candidate, then idempotency.Run for the missing ones).
//
//   - applied=90: the comparison of issue 9 (1,000 candidates still to do).
//   - applied=100: nothing to do, so only the pre-flight is measured.
//
// Metrics: candidates/s and statements per sweep.
func BenchmarkPreflight(b *testing.B) {
	const conc = 8
	for _, applied := range []int{appliedPercent, 100} {
		for _, mode := range []string{"batch", "per_candidate"} {
			b.Run(fmt.Sprintf("applied=%d/preflight=%s", applied, mode), func(b *testing.B) {
				f := newFixture(b, conc)
				run := f.librarySweep
				if mode == "per_candidate" {
					run = f.perCandidateSweep
				}
				f.seedHistory(b, historyRows)
				f.warm(b, conc)
				if _, err := run(grants(4*conc, 1), conc); err != nil {
					b.Fatal(err)
				}
				milestone := int64(100)
				statements := 0
				for b.Loop() {
					b.StopTimer()
					milestone++ // fresh keys: the same work every iteration
					gs, done := preflightCandidates(milestone, applied)
					f.seedApplied(b, done)
					f.analyze(b)
					before := f.count.Count()
					b.StartTimer()

					got, err := run(gs, conc)
					if err != nil {
						b.Fatal(err)
					}
					statements += f.count.Count() - before
					missing := len(gs) - len(done)
					if got.Applied != missing || got.AlreadyApplied != len(done) || got.ProviderCalls != missing {
						b.Fatalf("unexpected sweep: %s", got)
					}
				}
				b.ReportMetric(float64(sweepSize*b.N)/b.Elapsed().Seconds(), "candidates/s")
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
