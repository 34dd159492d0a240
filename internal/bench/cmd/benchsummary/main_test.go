package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// round holds the library's side of one round of benchmarks; every
// hand-written or per-candidate figure is 1000, so each field is its
// ratio times 1000.
type round struct {
	sweep, sweepSlow, groupCommit, repeat, preflight float64
	sweepStatements                                  float64 // per effect
	allocs                                           int
	diagnostics                                      bool // the applied=100 pre-flight ran
}

// rawRound renders one round of benchmark output.
func rawRound(r round) string {
	var b strings.Builder
	b.WriteString("goos: linux\ngoarch: amd64\npkg: github.com/effectonce/effectonce/internal/bench\ncpu: AMD EPYC\n")
	fmt.Fprintf(&b, "BenchmarkEffect/outcome=first_time-2 \t 859\t 1419672 ns/op\t 1.000 provider-calls/op\t 2.000 statements/op\t 4369 B/op\t 65 allocs/op\n")
	fmt.Fprintf(&b, "--- BENCH: BenchmarkEffect/outcome=first_time-2\n    bench_test.go:31: pgtest: using TEST_DATABASE_URL\n")
	fmt.Fprintf(&b, "BenchmarkEffect/outcome=already_applied-2 \t 6006\t 199121 ns/op\t 0 provider-calls/op\t 1.000 statements/op\t 2814 B/op\t 39 allocs/op\n")
	fmt.Fprintf(&b, "BenchmarkExecutor/outcome=first_time-2 \t 257498\t 5267 ns/op\t 1.000 provider-calls/op\t 660 B/op\t %d allocs/op\n", r.allocs)
	fmt.Fprintf(&b, "BenchmarkExecutor/outcome=already_applied-2 \t 353217\t 3361 ns/op\t 0 provider-calls/op\t 391 B/op\t 10 allocs/op\n")
	for _, l := range []struct {
		lat string
		lib float64
	}{{"0ms", r.sweep}, {"20ms", r.sweepSlow}} {
		fmt.Fprintf(&b, "BenchmarkSweep/latency=%s/conc=8/impl=library-2 \t 1\t 345271845 ns/op\t %g effects/s\t %g statements/effect\n", l.lat, l.lib, r.sweepStatements)
		fmt.Fprintf(&b, "BenchmarkSweep/latency=%s/conc=8/impl=handwritten-2 \t 1\t 934835293 ns/op\t 1000 effects/s\t 2.000 statements/effect\n", l.lat)
	}
	for _, lat := range []string{"0ms", "20ms"} {
		fmt.Fprintf(&b, "BenchmarkRun/new/latency=%s/conc=8/impl=groupcommit-2 \t 1\t 1 ns/op\t %g effects/s\t 0.2500 statements/effect\n", lat, r.groupCommit)
		if lat == "0ms" {
			fmt.Fprintf(&b, "BenchmarkRun/new/latency=%s/conc=8/impl=plain-2 \t 1\t 1 ns/op\t 500 effects/s\t 2.000 statements/effect\n", lat)
		}
		fmt.Fprintf(&b, "BenchmarkRun/new/latency=%s/conc=8/impl=handwritten-2 \t 1\t 1 ns/op\t 1000 effects/s\t 2.000 statements/effect\n", lat)
	}
	fmt.Fprintf(&b, "BenchmarkRun/repeat/latency=0ms/conc=8/impl=plain-2 \t 1\t 1 ns/op\t %g effects/s\t 1.000 statements/effect\n", r.repeat)
	fmt.Fprintf(&b, "BenchmarkRun/repeat/latency=0ms/conc=8/impl=groupcommit-2 \t 1\t 1 ns/op\t 800 effects/s\t 0.1250 statements/effect\n")
	fmt.Fprintf(&b, "BenchmarkRun/repeat/latency=0ms/conc=8/impl=handwritten-2 \t 1\t 1 ns/op\t 1000 effects/s\t 1.000 statements/effect\n")
	shapes := []string{"applied=90/latency=0ms", "applied=90/latency=20ms"}
	if r.diagnostics {
		shapes = append(shapes, "applied=100/latency=0ms")
	}
	for _, sh := range shapes {
		fmt.Fprintf(&b, "BenchmarkPreflight/%s/preflight=batch-2 \t 1\t 843945479 ns/op\t %g candidates/s\t 60 statements/op\n", sh, r.preflight)
		fmt.Fprintf(&b, "BenchmarkPreflight/%s/preflight=per_candidate-2 \t 1\t 2130101230 ns/op\t 1000 candidates/s\t 12000 statements/op\n", sh)
	}
	b.WriteString("PASS\n")
	return b.String()
}

var good = round{sweep: 2500, sweepSlow: 1080, groupCommit: 1100, repeat: 950, preflight: 9000, sweepStatements: 0.006, allocs: 15, diagnostics: true}

func TestSummaryMet(t *testing.T) {
	r1, r2, r3 := good, good, good
	r2.sweep, r3.sweep = 2000, 3000
	raw := rawRound(r1) + rawRound(r2) + rawRound(r3)
	var out, errOut bytes.Buffer
	code := run([]string{"-strict"}, strings.NewReader(raw), &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{
		"zero-latency provider (4,000 candidates)         2.50×  (rounds 2.00–3.00)   target ≥ 1.5×: met",
		"20 ms provider (1,000 candidates)                1.08×  (rounds 1.08–1.08)   target ≥ 1×: met",
		"statements per 1,000 fresh candidates             6.0   target ≤ 10: met",
		"all new, group commit, zero latency              1.10×",
		"repeat ÷ hand-written pre-flight                 0.95×",
		"100% done: the pre-flight alone",
		"already applied  1.00 statements, 0.00 provider calls   target 1 statement, 0 calls: met",
		"first time        15 allocs/op   target ≤ 30: met",
		"Targets: 10 met, 0 missed (medians of 3 rounds).",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSummaryMissed(t *testing.T) {
	bad := good
	bad.groupCommit, bad.repeat, bad.preflight, bad.sweepStatements, bad.allocs = 700, 450, 2500, 2.002, 40
	raw := rawRound(bad)
	var out, errOut bytes.Buffer
	if code := run(nil, strings.NewReader(raw), &out, &errOut); code != 0 {
		t.Fatalf("without -strict a missed target is reported, not fatal: exit %d", code)
	}
	if code := run([]string{"-strict"}, strings.NewReader(raw), &out, &errOut); code != exitMissedTarget {
		t.Fatalf("-strict: exit %d, want %d", code, exitMissedTarget)
	}
	for _, want := range []string{
		"MISSED (0.70×, 30% short)",
		"MISSED (0.45×, 50% short)",
		"MISSED (2.50×, 50% short)",
		"MISSED (2002.0)",
		"MISSED (40 allocs)",
		"Targets: 5 met, 5 missed",
		"missed: repeat per-item Run ÷ hand-written pre-flight: 0.45×, 50% short",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSummaryWithoutDiagnostics(t *testing.T) {
	r := good
	r.diagnostics = false
	var out, errOut bytes.Buffer
	if code := run([]string{"-strict"}, strings.NewReader(rawRound(r)), &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if strings.Contains(out.String(), "pre-flight alone") {
		t.Errorf("summary shows a diagnostic that did not run:\n%s", out.String())
	}
}

func TestSummaryAbsentBenchmark(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(nil, strings.NewReader("BenchmarkEffect/outcome=first_time-2 1 5 ns/op\n"), &out, &errOut)
	if code != exitMissingBenchmark || !strings.Contains(errOut.String(), "no results for") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
}

func TestTrimProcs(t *testing.T) {
	for in, want := range map[string]string{
		"BenchmarkSweep/latency=0ms/conc=8/impl=library-2": "BenchmarkSweep/latency=0ms/conc=8/impl=library",
		"BenchmarkSweep/conc=8/impl=library":               "BenchmarkSweep/conc=8/impl=library",
		"BenchmarkPreflight/preflight=per-cand-16":         "BenchmarkPreflight/preflight=per-cand",
	} {
		if got := trimProcs(in); got != want {
			t.Errorf("trimProcs(%q) = %q, want %q", in, got, want)
		}
	}
}
