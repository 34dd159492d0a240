// Package bench holds the project's benchmarks on a real PostgreSQL server,
// and the ordinary tests that pin the statement counts those benchmarks
// rely on. It has no API: everything is in its _test.go files.
//
// What is measured, all in one run (scripts/bench.sh, results in
// docs/performance.md):
//
//   - BenchmarkEffect: one effect through idempotency.Run and the pgguard
//     store against a zero-latency in-process provider, first time and
//     already applied: ns/op, allocs/op, statements/op (internal/pgcount)
//     and provider-calls/op.
//   - BenchmarkExecutor: the same effect on idempotency.MemStore, which
//     shows the core executor's own allocations, without a database driver.
//   - BenchmarkSweep: 10,000 fresh candidates at concurrency 1, 8 and 32,
//     through sweep.Run (impl=library) and written by hand the way teams
//     do it (impl=handwritten: pre-flight SELECT on a domain table, provider
//     call, INSERT collapsing 23505 on the partial unique index with
//     pgguard.IsUniqueViolation). Metric: effects/s.
//   - BenchmarkPreflight: 10,000 candidates of which 90% are already
//     applied, at concurrency 8: the sweep's batch pre-flight (one Lookup
//     per batch) against one lookup query per candidate. Metric:
//     candidates/s. With 100% applied (a diagnostic the script runs with
//     BENCH_DIAGNOSTICS=1) only the pre-flight is left to measure.
//
// Run the benchmarks with scripts/bench.sh, which interleaves rounds,
// runs benchstat and prints one summary (internal/bench/cmd/benchsummary).
// TestStatementsPerOutcome and its neighbours run in every go test ./...
// and check the statement counts deterministically.
package bench
