package keyclock_test

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/tools/go/analysis/analysistest"

	"github.com/effectonce/effectonce/analysis/keyclock"
)

// recorder collects analysistest's complaints, so that one load of the
// testdata (type-checking net/http from source is slow) serves every
// subtest.
type recorder struct{ msgs []string }

func (r *recorder) Errorf(format string, args ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}

// runCases runs the analyzer once over every case's package and reports,
// in a subtest per case, the complaints about that package's files: a
// report or a fact that was not expected, or an expectation that was not
// met.
func runCases(t *testing.T, cases []struct{ name, pkg string }) {
	t.Helper()
	var pkgs []string
	for _, c := range cases {
		pkgs = append(pkgs, c.pkg)
	}
	rec := &recorder{}
	results := analysistest.Run(rec, analysistest.TestData(), keyclock.Analyzer, pkgs...)
	if len(results) < len(pkgs) {
		t.Fatalf("analyzed %d packages, want at least %d:\n%s", len(results), len(pkgs), strings.Join(rec.msgs, "\n"))
	}
	claimed := make([]bool, len(rec.msgs))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i, m := range rec.msgs {
				if strings.HasPrefix(m, strings.TrimSuffix(c.pkg, "/...")+"/") {
					claimed[i] = true
					t.Error(m)
				}
			}
		})
	}
	for i, m := range rec.msgs {
		if !claimed[i] {
			t.Error(m)
		}
	}
}

// TestAnalyzer checks every report and fact in testdata/src/example.com
// against its // want comment.
func TestAnalyzer(t *testing.T) {
	setFlags(t, "X-Once-Key", "example.com/ulid.Make")
	runCases(t, []struct{ name, pkg string }{
		// The incident's 30-day epoch bucket, in the key builder and in
		// the original job's hand-written Stripe key.
		{"Incident", "example.com/incident"},
		// stripe-go's IdempotencyKey field, assigned and in a literal.
		{"StripeField", "example.com/stripekeys"},
		// http.Header Set, Add and map assignment in any case; other
		// headers and name-based UUIDs are not reported.
		{"Headers", "example.com/headers"},
		// httpeffect.Config{HeaderName: ...} makes that header a sink, in
		// its package and in importing ones (a package fact).
		{"HTTPEffectHeaderName", "example.com/customheader/..."},
		// Helpers returning clock values, passing a parameter to a sink or
		// to their result, closures reading a captured clock value, and an
		// exported helper used from another package (object facts).
		{"Helpers", "example.com/helpers"},
		{"AcrossPackages", "example.com/crosspkg"},
		// Business keys and business times: nothing is reported.
		{"BusinessData", "example.com/business"},
		// strconv, strings.Join, rand.Intn, crypto/rand, a strings.Builder,
		// a hash, the namespace and the secret, seeded generators, keys
		// built from keys, branches, append, maps.
		{"Traps", "example.com/traps"},
		// //effectoncevet:ignore on the line or alone above it.
		{"Suppression", "example.com/ignored"},
		// -headers and -sources add a header and a source.
		{"Flags", "example.com/flags"},
	})
}

// setFlags sets the analyzer's -headers and -sources for the test.
func setFlags(t *testing.T, headers, sources string) {
	t.Helper()
	set := func(headers, sources string) {
		for name, v := range map[string]string{"headers": headers, "sources": sources} {
			if err := keyclock.Analyzer.Flags.Set(name, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	set(headers, sources)
	t.Cleanup(func() { set("", "") })
}

// TestWithoutFlags checks that without -sources a generator the analyzer
// does not know is not reported (TestAnalyzer's "Flags" case shows it is
// with the flag).
func TestWithoutFlags(t *testing.T) {
	analysistest.Run(t, analysistest.TestData(), keyclock.Analyzer, "example.com/flagsoff")
}
