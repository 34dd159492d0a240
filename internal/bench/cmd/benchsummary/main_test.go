package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// rawRound renders one round of benchmark output; lib8 is the library's
// effects/s at concurrency 8 (hand-written: 1000 everywhere).
func rawRound(lib8, batch float64, allocs int) string {
	var b strings.Builder
	b.WriteString("goos: linux\ngoarch: amd64\npkg: github.com/effectonce/effectonce/internal/bench\ncpu: AMD EPYC\n")
	fmt.Fprintf(&b, "BenchmarkEffect/outcome=first_time-2 \t 859\t 1419672 ns/op\t 1.000 provider-calls/op\t 2.000 statements/op\t 4369 B/op\t 65 allocs/op\n")
	fmt.Fprintf(&b, "--- BENCH: BenchmarkEffect/outcome=first_time-2\n    bench_test.go:31: pgtest: using TEST_DATABASE_URL\n")
	fmt.Fprintf(&b, "BenchmarkEffect/outcome=already_applied-2 \t 6006\t 199121 ns/op\t 0 provider-calls/op\t 1.000 statements/op\t 2814 B/op\t 39 allocs/op\n")
	fmt.Fprintf(&b, "BenchmarkExecutor/outcome=first_time-2 \t 257498\t 5267 ns/op\t 1.000 provider-calls/op\t 660 B/op\t %d allocs/op\n", allocs)
	fmt.Fprintf(&b, "BenchmarkExecutor/outcome=already_applied-2 \t 353217\t 3361 ns/op\t 0 provider-calls/op\t 391 B/op\t 10 allocs/op\n")
	for _, c := range []int{1, 8, 32} {
		lib := 500.0
		if c == 8 {
			lib = lib8
		}
		fmt.Fprintf(&b, "BenchmarkSweep/conc=%d/impl=library-2 \t 1\t 14527184521 ns/op\t %g effects/s\t 2.002 statements/effect\n", c, lib)
		fmt.Fprintf(&b, "BenchmarkSweep/conc=%d/impl=handwritten-2 \t 1\t 6348352930 ns/op\t 1000 effects/s\t 2.000 statements/effect\n", c)
	}
	for _, pct := range []int{90, 100} {
		fmt.Fprintf(&b, "BenchmarkPreflight/applied=%d/preflight=batch-2 \t 1\t 843945479 ns/op\t %g candidates/s\t 2020 statements/op\n", pct, batch)
		fmt.Fprintf(&b, "BenchmarkPreflight/applied=%d/preflight=per_candidate-2 \t 1\t 2130101230 ns/op\t 1000 candidates/s\t 12000 statements/op\n", pct)
	}
	b.WriteString("PASS\n")
	return b.String()
}

func TestSummaryMet(t *testing.T) {
	raw := rawRound(900, 6000, 15) + rawRound(1000, 5000, 15) + rawRound(950, 5500, 15)
	var out, errOut bytes.Buffer
	code := run([]string{"-strict"}, strings.NewReader(raw), &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{
		"conc=8    0.95×  (rounds 0.90–1.00)   target ≥ 0.90×: met",
		"90% already applied                        5.50×",
		"already applied  1.00 statements, 0.00 provider calls   target 1 statement, 0 calls: met",
		"first time        15 allocs/op   target ≤ 30: met",
		"Targets: 6 met, 0 missed (medians of 3 rounds).",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSummaryMissed(t *testing.T) {
	raw := rawRound(450, 2500, 40)
	var out, errOut bytes.Buffer
	if code := run(nil, strings.NewReader(raw), &out, &errOut); code != 0 {
		t.Fatalf("without -strict a missed target is reported, not fatal: exit %d", code)
	}
	if code := run([]string{"-strict"}, strings.NewReader(raw), &out, &errOut); code != exitMissedTarget {
		t.Fatalf("-strict: exit %d, want %d", code, exitMissedTarget)
	}
	for _, want := range []string{
		"MISSED (0.45×, 50% short)",
		"MISSED (2.50×, 50% short)",
		"MISSED (40 allocs)",
		"Targets: 3 met, 3 missed",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSummaryWithoutDiagnostics(t *testing.T) {
	var raw strings.Builder
	for _, line := range strings.Split(rawRound(950, 5500, 15), "\n") {
		if !strings.Contains(line, "applied=100") {
			raw.WriteString(line + "\n")
		}
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"-strict"}, strings.NewReader(raw.String()), &out, &errOut); code != 0 {
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
		"BenchmarkSweep/conc=8/impl=library-2":     "BenchmarkSweep/conc=8/impl=library",
		"BenchmarkSweep/conc=8/impl=library":       "BenchmarkSweep/conc=8/impl=library",
		"BenchmarkPreflight/preflight=per-cand-16": "BenchmarkPreflight/preflight=per-cand",
	} {
		if got := trimProcs(in); got != want {
			t.Errorf("trimProcs(%q) = %q, want %q", in, got, want)
		}
	}
}
