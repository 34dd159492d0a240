// Command benchsummary reads the raw output of the benchmarks in
// internal/bench (go test -bench format, any number of rounds
// concatenated) and prints one summary: the ratios issue 16 asks for,
// each against its target, and the statement counts and allocations of
// earlier issues.
//
//	benchsummary [-strict] raw.txt...
//
// Figures are medians over the rounds; a ratio also shows the range of the
// per-round ratios (round i of one benchmark against round i of the other,
// which ran seconds apart). With -strict the exit status is 1 when a target
// is missed; it is 2 when a benchmark is absent from the input.
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

// Targets of issue 16 (ratios at concurrency 8), and of issue 9 (statements
// per outcome, allocations).
const (
	minSweepRatio        = 1.5  // all-new sweep ÷ hand-written, zero latency
	minSweepSlowRatio    = 1.0  // ... with a 20 ms provider
	minGroupCommitRatio  = 1.0  // all-new per-item Run with group commit ÷ hand-written
	minRepeatRatio       = 0.9  // repeat per-item Run ÷ hand-written pre-flight
	minPreflightSpeedup  = 5.0  // 90%-done sweep, batch ÷ per-candidate
	maxSweepStatements   = 10.0 // statements for a sweep of 1,000 fresh candidates
	maxExecutorAllocs    = 30   // core executor, allocations per effect
	maxFirstTimeStmts    = 2    // DESIGN.md: claim, complete
	alreadyAppliedStmts  = 1
	effectsUnit          = "effects/s"
	candidatesUnit       = "candidates/s"
	statementsUnit       = "statements/op"
	statementsPerEffect  = "statements/effect"
	providerCallsUnit    = "provider-calls/op"
	allocsUnit           = "allocs/op"
	nsUnit               = "ns/op"
	benchSweep           = "BenchmarkSweep/latency=%s/conc=8/impl=%s"
	benchRunNew          = "BenchmarkRun/new/latency=%s/conc=8/impl=%s"
	benchRunRepeat       = "BenchmarkRun/repeat/latency=0ms/conc=8/impl=%s"
	benchPreflight       = "BenchmarkPreflight/applied=%d/latency=%s/preflight=%s"
	benchEffect          = "BenchmarkEffect/outcome=%s"
	benchExecutor        = "BenchmarkExecutor/outcome=%s"
	exitMissedTarget     = 1
	exitMissingBenchmark = 2
)

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

// comparison prints one ratio line, with its target when min > 0.
func (s *summary) comparison(label, a, b, unit string, min float64, what string) {
	r, lo, hi, err := s.ratio(a, b, unit)
	if err != nil {
		s.printf("  %-46s (no data)\n", label)
		return
	}
	line := fmt.Sprintf("  %-46s %6.2f×  (rounds %.2f–%.2f)", label, r, lo, hi)
	if min > 0 {
		line += fmt.Sprintf("   target ≥ %.2g×: %s", min,
			s.verdict(r >= min, what, fmt.Sprintf("%.2f×, %.0f%% short", r, 100*(1-r/min))))
	}
	s.printf("%s\n", line)
}

func (s *summary) sweeps() {
	s.printf("All-new sweep (sweep.Run) ÷ hand-written, concurrency 8, effects/s:\n")
	s.comparison("zero-latency provider (4,000 candidates)", fmt.Sprintf(benchSweep, "0ms", "library"), fmt.Sprintf(benchSweep, "0ms", "handwritten"),
		effectsUnit, minSweepRatio, "all-new sweep ÷ hand-written, zero latency")
	s.comparison("20 ms provider (1,000 candidates)", fmt.Sprintf(benchSweep, "20ms", "library"), fmt.Sprintf(benchSweep, "20ms", "handwritten"),
		effectsUnit, minSweepSlowRatio, "all-new sweep ÷ hand-written, 20 ms provider")
	if lib, err := s.median(fmt.Sprintf(benchSweep, "0ms", "library"), statementsPerEffect); err == nil {
		n := lib * 1000
		s.printf("  %-46s %6.1f   target ≤ %.0f: %s\n", "statements per 1,000 fresh candidates", n, maxSweepStatements,
			s.verdict(n <= maxSweepStatements, "statements for a sweep of 1,000 fresh candidates", fmt.Sprintf("%.1f", n)))
	}
}

func (s *summary) runs() {
	s.printf("Per-item idempotency.Run, 8 at once, ÷ hand-written, effects/s:\n")
	s.comparison("all new, group commit, zero latency", fmt.Sprintf(benchRunNew, "0ms", "groupcommit"), fmt.Sprintf(benchRunNew, "0ms", "handwritten"),
		effectsUnit, minGroupCommitRatio, "all-new per-item Run with group commit ÷ hand-written")
	s.comparison("all new, group commit, 20 ms provider", fmt.Sprintf(benchRunNew, "20ms", "groupcommit"), fmt.Sprintf(benchRunNew, "20ms", "handwritten"),
		effectsUnit, 0, "")
	s.comparison("all new, no group commit, zero latency", fmt.Sprintf(benchRunNew, "0ms", "plain"), fmt.Sprintf(benchRunNew, "0ms", "handwritten"),
		effectsUnit, 0, "")
	s.comparison("repeat ÷ hand-written pre-flight", fmt.Sprintf(benchRunRepeat, "plain"), fmt.Sprintf(benchRunRepeat, "handwritten"),
		effectsUnit, minRepeatRatio, "repeat per-item Run ÷ hand-written pre-flight")
	s.comparison("repeat with group commit ÷ hand-written", fmt.Sprintf(benchRunRepeat, "groupcommit"), fmt.Sprintf(benchRunRepeat, "handwritten"),
		effectsUnit, 0, "")
}

func (s *summary) preflight() {
	s.printf("90%%-done sweep at concurrency 8, batch ÷ per-candidate pre-flight, candidates/s:\n")
	s.comparison("zero-latency provider (10,000 candidates)", fmt.Sprintf(benchPreflight, 90, "0ms", "batch"), fmt.Sprintf(benchPreflight, 90, "0ms", "per_candidate"),
		candidatesUnit, minPreflightSpeedup, "90%-done sweep, batch ÷ per-candidate")
	s.comparison("20 ms provider (4,000 candidates)", fmt.Sprintf(benchPreflight, 90, "20ms", "batch"), fmt.Sprintf(benchPreflight, 90, "20ms", "per_candidate"),
		candidatesUnit, 0, "")
	batch, per := fmt.Sprintf(benchPreflight, 100, "0ms", "batch"), fmt.Sprintf(benchPreflight, 100, "0ms", "per_candidate")
	if s.res[batch] != nil && s.res[per] != nil { // BENCH_DIAGNOSTICS=1
		s.comparison("100% done: the pre-flight alone", batch, per, candidatesUnit, 0, "")
	}
	bs, err1 := s.median(fmt.Sprintf(benchPreflight, 90, "0ms", "batch"), statementsUnit)
	ps, err2 := s.median(fmt.Sprintf(benchPreflight, 90, "0ms", "per_candidate"), statementsUnit)
	if err1 == nil && err2 == nil {
		s.printf("  %-46s batch %.0f, per-candidate %.0f\n", "statements per sweep (zero latency)", bs, ps)
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
	for _, part := range []func(){s.sweeps, s.runs, s.preflight, s.statements, s.allocations} {
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
