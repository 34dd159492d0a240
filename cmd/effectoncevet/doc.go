// Command effectoncevet reports idempotency keys derived from the clock or
// from randomness. It runs the keyclock analyzer
// (github.com/effectonce/effectonce/analysis/keyclock) and nothing else.
//
// Run it on its own:
//
//	go install github.com/effectonce/effectonce/cmd/effectoncevet@latest
//	effectoncevet ./...
//
// or through go vet, which caches its results:
//
//	go vet -vettool=$(command -v effectoncevet) ./...
//
// It exits non-zero when it reports anything. Flags: -headers and -sources
// (see package keyclock); a report is suppressed with a comment
// //effectoncevet:ignore <reason> on its line or alone on the line above.
package main
