// Command benchsummary reads the raw output of the benchmarks in
// internal/bench (go test -bench format, any number of rounds
// concatenated) and prints one summary: the ratios issue 9 asks for and
// whether each target is met.
//
//	benchsummary [-strict] raw.txt...
//
// Figures are medians over the rounds; a ratio also shows the range of the
// per-round ratios (round i of one benchmark against round i of the other,
// which ran minutes apart at most). With -strict the exit status is 1 when
// a target is missed; it is 2 when a benchmark is absent from the input.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Targets of issue 9.
const (
	minLibraryRatio      = 0.90 // library ÷ hand-written throughput at concurrency 8
	targetConcurrency    = 8
	minPreflightSpeedup  = 5.0 // batch ÷ per-candidate pre-flight, 90% applied
	maxExecutorAllocs    = 30  // core executor, allocations per effect
	maxFirstTimeStmts    = 2   // DESIGN.md: claim, complete
	alreadyAppliedStmts  = 1
	preflightAppliedPct  = 90
	preflightAlonePct    = 100
	sweepUnit            = "effects/s"
	preflightUnit        = "candidates/s"
	statementsUnit       = "statements/op"
	providerCallsUnit    = "provider-calls/op"
	allocsUnit           = "allocs/op"
	nsUnit               = "ns/op"
	benchSweep           = "BenchmarkSweep/conc=%d/impl=%s"
	benchPreflight       = "BenchmarkPreflight/applied=%d/preflight=%s"
	benchEffect          = "BenchmarkEffect/outcome=%s"
	benchExecutor        = "BenchmarkExecutor/outcome=%s"
	exitMissedTarget     = 1
	exitMissingBenchmark = 2
)

var sweepConcurrencies = []int{1, 8, 32}

// results maps a benchmark name (without the -GOMAXPROCS suffix) and a
// unit to the values of every round, in input order.
type results map[string]map[string][]float64

func parse(r io.Reader) (results, error) {
	res := results{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// BenchmarkName-2  <iterations>  <value> <unit>  <value> <unit> ...
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue
		}
		name := trimProcs(f[0])
		if res[name] == nil {
			res[name] = map[string][]float64{}
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: value %q: %w", f[0], f[i], err)
			}
			res[name][f[i+1]] = append(res[name][f[i+1]], v)
		}
	}
	return res, sc.Err()
}

// trimProcs removes the "-N" GOMAXPROCS suffix go test adds to names.
func trimProcs(name string) string {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return name
	}
	if _, err := strconv.Atoi(name[i+1:]); err != nil {
		return name
	}
	return name[:i]
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summary accumulates the report and the targets' verdicts.
type summary struct {
	res     results
	w       io.Writer
	met     int
	missed  []string
	absent  []string
	samples int
}

var errAbsent = errors.New("absent")

func (s *summary) values(name, unit string) ([]float64, error) {
	v := s.res[name][unit]
	if len(v) == 0 {
		s.absent = append(s.absent, name+" "+unit)
		return nil, errAbsent
	}
	s.samples = max(s.samples, len(v))
	return v, nil
}

func (s *summary) median(name, unit string) (float64, error) {
	v, err := s.values(name, unit)
	if err != nil {
		return 0, err
	}
	return median(v), nil
}

// ratio returns median(a) ÷ median(b) and the range of the per-round
// ratios a[i] ÷ b[i].
func (s *summary) ratio(a, b, unit string) (r, lo, hi float64, err error) {
	av, err := s.values(a, unit)
	if err != nil {
		return 0, 0, 0, err
	}
	bv, err := s.values(b, unit)
	if err != nil {
		return 0, 0, 0, err
	}
	lo, hi = -1, -1
	for i := range min(len(av), len(bv)) {
		x := av[i] / bv[i]
		if lo < 0 || x < lo {
			lo = x
		}
		hi = max(hi, x)
	}
	return median(av) / median(bv), lo, hi, nil
}

func (s *summary) printf(format string, args ...any) { fmt.Fprintf(s.w, format, args...) }

func (s *summary) verdict(ok bool, what, missedBy string) string {
	if ok {
		s.met++
		return "met"
	}
	s.missed = append(s.missed, what+": "+missedBy)
	return "MISSED (" + missedBy + ")"
}

func (s *summary) sweeps() {
	s.printf("Sweep of 10,000 fresh candidates, library ÷ hand-written throughput (effects/s):\n")
	for _, c := range sweepConcurrencies {
		lib, hand := fmt.Sprintf(benchSweep, c, "library"), fmt.Sprintf(benchSweep, c, "handwritten")
		r, lo, hi, err := s.ratio(lib, hand, sweepUnit)
		if err != nil {
			s.printf("  conc=%-3d (no data)\n", c)
			continue
		}
		line := fmt.Sprintf("  conc=%-3d %5.2f×  (rounds %.2f–%.2f)", c, r, lo, hi)
		if c == targetConcurrency {
			line += fmt.Sprintf("   target ≥ %.2f×: %s", minLibraryRatio,
				s.verdict(r >= minLibraryRatio, fmt.Sprintf("library ÷ hand-written at concurrency %d", c),
					fmt.Sprintf("%.2f×, %.0f%% short", r, 100*(1-r/minLibraryRatio))))
		}
		s.printf("%s\n", line)
	}
	if lib, err := s.median(fmt.Sprintf(benchSweep, targetConcurrency, "library"), "statements/effect"); err == nil {
		if hand, err := s.median(fmt.Sprintf(benchSweep, targetConcurrency, "handwritten"), "statements/effect"); err == nil {
			s.printf("  statements per effect at conc=%d: library %.3f, hand-written %.3f\n", targetConcurrency, lib, hand)
		}
	}
}

func (s *summary) preflight() {
	s.printf("Sweep of 10,000 candidates at conc=8, batch ÷ per-candidate pre-flight (candidates/s):\n")
	for _, pct := range []int{preflightAppliedPct, preflightAlonePct} {
		batch, per := fmt.Sprintf(benchPreflight, pct, "batch"), fmt.Sprintf(benchPreflight, pct, "per_candidate")
		if pct == preflightAlonePct && (s.res[batch] == nil || s.res[per] == nil) {
			continue // a diagnostic scripts/bench.sh runs only with BENCH_DIAGNOSTICS=1
		}
		r, lo, hi, err := s.ratio(batch, per, preflightUnit)
		if err != nil {
			s.printf("  %d%% already applied: (no data)\n", pct)
			continue
		}
		label := fmt.Sprintf("%d%% already applied", pct)
		if pct == preflightAlonePct {
			label += " (pre-flight alone)"
		}
		line := fmt.Sprintf("  %-40s %6.2f×  (rounds %.2f–%.2f)", label, r, lo, hi)
		if pct == preflightAppliedPct {
			line += fmt.Sprintf("   target ≥ %.0f×: %s", minPreflightSpeedup,
				s.verdict(r >= minPreflightSpeedup, "batch ÷ per-candidate pre-flight",
					fmt.Sprintf("%.2f×, %.0f%% short", r, 100*(1-r/minPreflightSpeedup))))
		}
		s.printf("%s\n", line)
		bs, err1 := s.median(batch, statementsUnit)
		ps, err2 := s.median(per, statementsUnit)
		if err1 == nil && err2 == nil {
			s.printf("  %-40s statements per sweep: batch %.0f, per-candidate %.0f\n", "", bs, ps)
		}
	}
}

func (s *summary) statements() {
	s.printf("Statements per outcome (pgguard store, counted by internal/pgcount):\n")
	first, err1 := s.median(fmt.Sprintf(benchEffect, "first_time"), statementsUnit)
	firstCalls, err2 := s.median(fmt.Sprintf(benchEffect, "first_time"), providerCallsUnit)
	if err1 == nil && err2 == nil {
		s.printf("  first time       %.2f statements, %.2f provider calls   target ≤ %d statements: %s\n",
			first, firstCalls, maxFirstTimeStmts,
			s.verdict(first <= maxFirstTimeStmts, "first-time statements", fmt.Sprintf("%.2f", first)))
	}
	again, err1 := s.median(fmt.Sprintf(benchEffect, "already_applied"), statementsUnit)
	againCalls, err2 := s.median(fmt.Sprintf(benchEffect, "already_applied"), providerCallsUnit)
	if err1 == nil && err2 == nil {
		s.printf("  already applied  %.2f statements, %.2f provider calls   target 1 statement, 0 calls: %s\n",
			again, againCalls,
			s.verdict(again == alreadyAppliedStmts && againCalls == 0, "already-applied path",
				fmt.Sprintf("%.2f statements, %.2f calls", again, againCalls)))
	}
	if r, lo, hi, err := s.ratio(fmt.Sprintf(benchEffect, "first_time"), fmt.Sprintf(benchEffect, "already_applied"), nsUnit); err == nil {
		s.printf("  first-time ÷ already-applied latency: %.2f× (rounds %.2f–%.2f)\n", r, lo, hi)
	}
}

func (s *summary) allocations() {
	s.printf("Allocations per effect, core executor (idempotency.Run on MemStore, no driver):\n")
	for _, o := range []string{"first_time", "already_applied"} {
		a, err := s.median(fmt.Sprintf(benchExecutor, o), allocsUnit)
		if err != nil {
			continue
		}
		s.printf("  %-16s %3.0f allocs/op   target ≤ %d: %s\n", strings.ReplaceAll(o, "_", " "), a, maxExecutorAllocs,
			s.verdict(a <= maxExecutorAllocs, "core executor allocations ("+o+")", fmt.Sprintf("%.0f allocs", a)))
	}
	first, err1 := s.median(fmt.Sprintf(benchEffect, "first_time"), allocsUnit)
	again, err2 := s.median(fmt.Sprintf(benchEffect, "already_applied"), allocsUnit)
	if err1 == nil && err2 == nil {
		s.printf("  for comparison, with the pgguard store and pgx: %.0f (first time), %.0f (already applied)\n", first, again)
	}
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("benchsummary", flag.ContinueOnError)
	fs.SetOutput(stderr)
	strict := fs.Bool("strict", false, "exit with status 1 when a target is missed")
	if err := fs.Parse(args); err != nil {
		return exitMissingBenchmark
	}
	var readers []io.Reader
	for _, name := range fs.Args() {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(stderr, "benchsummary:", err)
			return exitMissingBenchmark
		}
		defer f.Close()
		readers = append(readers, f)
	}
	if len(readers) == 0 {
		readers = append(readers, stdin)
	}
	res, err := parse(io.MultiReader(readers...))
	if err != nil {
		fmt.Fprintln(stderr, "benchsummary:", err)
		return exitMissingBenchmark
	}
	s := &summary{res: res, w: stdout}
	for _, part := range []func(){s.sweeps, s.preflight, s.statements, s.allocations} {
		part()
	}
	s.printf("Targets: %d met, %d missed (medians of %d rounds).\n", s.met, len(s.missed), s.samples)
	for _, m := range s.missed {
		s.printf("  missed: %s\n", m)
	}
	if len(s.absent) > 0 {
		fmt.Fprintf(stderr, "benchsummary: no results for: %s\n", strings.Join(s.absent, ", "))
		return exitMissingBenchmark
	}
	if *strict && len(s.missed) > 0 {
		return exitMissedTarget
	}
	return 0
}

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
