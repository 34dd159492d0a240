#!/usr/bin/env bash
# The project's benchmarks on a real PostgreSQL server (internal/bench):
#
#   bash scripts/bench.sh
#
# 1. Makes sure a database is there, exactly as scripts/test.sh does (it runs
#    this script through `scripts/test.sh -- ...`, without stripe-mock), so
#    TEST_DATABASE_URL or the testcontainers path is set up the same way.
# 2. Builds the benchmark binary once, then runs BENCH_COUNT rounds (default
#    5, about 5 minutes on 2 cores; 6 gives benchstat its confidence
#    intervals). Each round runs every benchmark once (-test.count=1), so the
#    rounds interleave: the library and the hand-written baseline always run
#    seconds apart, and load from elsewhere on the machine hits both alike.
#    The benchmark count benchstat sees is BENCH_COUNT, as with go test
#    -count=BENCH_COUNT. The per-effect benchmarks run for BENCH_MICRO_TIME
#    (default 0.5s) each; a comparison's iteration is a whole sweep (or a
#    whole set of runs) of thousands of candidates, run once per round
#    (-test.benchtime=1x), at concurrency 8, with a zero-latency provider
#    and with a 20 ms one. The server's settings are left as they are
#    (synchronous_commit included).
# 3. Saves the raw output, runs benchstat on it, and prints one summary
#    (internal/bench/cmd/benchsummary): the ratios of issue 16 against the
#    hand-written pattern (all-new sweep, all-new per-item Run with group
#    commit, repeat per-item Run, 90%-done sweep against per-candidate
#    pre-flight), statements per sweep and per outcome, and the core
#    executor's allocations per effect, each against its target.
#
# Output goes to BENCH_OUT (default $EFFECTONCE_STATE/bench, that is
# /tmp/effectonce-ci/bench): raw.txt, benchstat.txt, summary.txt, machine.txt.
# BENCH_STRICT=1 makes a missed target fail the script. BENCH_DIAGNOSTICS=1
# also runs the pre-flight alone (BenchmarkPreflight/applied=100), which
# takes about 20 seconds more.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${EFFECTONCE_BENCH_INNER:-} ]]; then
	export EFFECTONCE_BENCH_INNER=1
	EFFECTONCE_STRIPE_MOCK=0 exec bash scripts/test.sh -- bash scripts/bench.sh "$@"
fi

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

BENCHSTAT=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
count=${BENCH_COUNT:-5}
micro=${BENCH_MICRO_TIME:-0.5s}
out=${BENCH_OUT:-$EFFECTONCE_STATE/bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)
raw=$out/raw.txt
# The comparisons of issue 16; BENCH_DIAGNOSTICS=1 adds BenchmarkPreflight's
# applied=100 case (the pre-flight alone, nothing left to do).
comparisons='^Benchmark(Sweep|Run)$'
preflights='^BenchmarkPreflight$/^applied=90$'
if [[ ${BENCH_DIAGNOSTICS:-0} == 1 ]]; then
	preflights='^BenchmarkPreflight$'
fi
started=$SECONDS

say "bench.sh: building the benchmarks"
go test -c -o "$out/bench.test" ./internal/bench
go build -o "$out/benchsummary" ./internal/bench/cmd/benchsummary

# The machine and the server, recorded with the results.
server=$(cd internal/bench && "$out/bench.test" -test.run '^TestServerVersion$' -test.v 2>&1 |
	sed -n 's/^.*server: //p' | head -n 1)
[[ -n $server ]] || { say "bench.sh: no PostgreSQL server answered (see TestServerVersion)"; exit 1; }
{
	echo "date:       $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "commit:     $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
	echo "cores:      $(nproc)"
	echo "cpu:        $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)"
	echo "go:         $(go version | cut -d' ' -f3-)"
	echo "postgresql: $server"
	echo "rounds:     $count (per-effect benchmarks: -benchtime $micro; comparisons: -benchtime 1x)"
	echo "load:       $(cut -d' ' -f1-3 /proc/loadavg) at the start (1, 5, 15 min)"
} >"$out/machine.txt"

: >"$raw"
for round in $(seq 1 "$count"); do
	say "bench.sh: round $round of $count ($((SECONDS - started))s so far)"
	(
		cd internal/bench
		"$out/bench.test" -test.run '^$' -test.bench '^Benchmark(Effect|Executor)$' \
			-test.benchtime "$micro" -test.benchmem -test.count 1
		"$out/bench.test" -test.run '^$' -test.bench "$comparisons" \
			-test.benchtime 1x -test.benchmem -test.count 1
		"$out/bench.test" -test.run '^$' -test.bench "$preflights" \
			-test.benchtime 1x -test.benchmem -test.count 1
	) >>"$raw" 2>&1 || { say "bench.sh: a benchmark failed; see $raw"; tail -n 20 "$raw"; exit 1; }
done

say "bench.sh: benchstat"
if ! {
	echo "# All-new sweeps at concurrency 8: library against hand-written, by provider latency"
	go run "$BENCHSTAT" -filter '.name:Sweep' -col /impl "$raw"
	echo
	echo "# Per-item runs at concurrency 8: group commit, plain, hand-written"
	go run "$BENCHSTAT" -filter '.name:Run' -col /impl "$raw"
	echo
	echo "# 90%-done sweeps at concurrency 8: batch against per-candidate pre-flight"
	go run "$BENCHSTAT" -filter '.name:Preflight' -col /preflight "$raw"
	echo
	echo "# One effect: pgguard store (Effect) and MemStore (Executor)"
	go run "$BENCHSTAT" -filter '.name:(Effect OR Executor)' "$raw"
} >"$out/benchstat.txt" 2>&1; then
	loud "benchstat failed (see $out/benchstat.txt); the summary below does not need it"
fi

status=0
"$out/benchsummary" "$raw" >"$out/summary.txt" || status=$?

echo
echo "==================== effectonce benchmark summary ===================="
sed 's/^/  /' "$out/machine.txt"
echo
cat "$out/summary.txt"
echo
echo "raw output: $raw"
echo "benchstat:  $out/benchstat.txt"
echo "took $((SECONDS - started))s"
if [[ $status -eq 2 ]]; then
	exit 2
fi
if [[ ${BENCH_STRICT:-0} == 1 ]]; then
	"$out/benchsummary" -strict "$raw" >/dev/null
fi
