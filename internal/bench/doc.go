// Package bench holds the project's benchmarks on a real PostgreSQL server,
// and the ordinary tests that pin the statement counts those benchmarks
// rely on. It has no API: everything is in its _test.go files.
//
// What is measured, all in one run (scripts/bench.sh, results in
// docs/performance.md), against the hand-written pattern teams write
// without the library (pre-flight SELECT on a domain table, provider call,
// INSERT collapsing 23505 on the partial unique index with
// pgguard.IsUniqueViolation), at concurrency 8, with a zero-latency
// in-process provider and with one whose calls take 20 ms:
//
//   - BenchmarkSweep: fresh candidates through sweep.Run (one pre-flight,
//     one ClaimMany per batch, completions written in groups). Metric:
//     effects/s.
//   - BenchmarkRun: one idempotency.Run per candidate, 8 at once, as queue
//     consumers do: fresh keys with idempotency.GroupCommit and without
//     it, and repeats of finished keys (one claim-or-fetch each, no
//     provider call). Metric: effects/s.
//   - BenchmarkPreflight: candidates of which 90% are already applied: the
//     sweep against one lookup query per candidate followed by
//     idempotency.Run. Metric: candidates/s. With 100% applied (a
//     diagnostic the script runs with BENCH_DIAGNOSTICS=1) only the
//     pre-flight is left to measure.
//   - BenchmarkEffect and BenchmarkExecutor: one effect through the pgguard
//     store and through idempotency.MemStore: ns/op, allocs/op,
//     statements/op (internal/pgcount), provider-calls/op.
//
// Run the benchmarks with scripts/bench.sh, which interleaves rounds,
// runs benchstat and prints one summary (internal/bench/cmd/benchsummary).
// TestStatementsPerOutcome, TestStatementsPerSweep,
// TestStatementsWithGroupCommit and their neighbours run in every go test
// ./... and check the statement counts deterministically.
package bench
