// Package docsnippets keeps the Go code in README.md and docs/ compiling: every
// ```go block in them is a copy of a region of a compiled Go file, and a test
// fails when the copy drifts from its source.
//
// # In the markdown
//
// The line directly above each ```go fence names the block's source, as a
// path from the module root and a region name:
//
//	<!-- snippet: internal/docsnippets/readme_test.go#readme-flow -->
//	```go
//	...
//	```
//
// A block that cannot compile (a sketch, pseudo-code) says so instead, with
// a reason, and is not checked; keep those rare:
//
//	<!-- snippet: none (pseudo-code: the order of the steps, not an API) -->
//
// # In the Go file
//
// A region is the lines between two comment lines:
//
//	// snippet:readme-flow
//	keys := idempotency.KeySpace{Namespace: "loyalty.anniversary", Version: 1}
//	...
//	// end snippet
//
// Regions may nest (an end closes the innermost open one); the marker lines
// of inner regions are left out of the outer region's text. When a file has
// no region of the name, a top-level function of that name is looked for
// and its body is the snippet, without an example's trailing "// Output:"
// comment: <!-- snippet: idempotency/example_test.go#ExampleRun -->.
//
// A line "// snippet:hide-next" leaves itself and the line after it out of
// every region's text. It exists for a directive the compiled code needs on
// that line and the reader must not see (an //effectoncevet:ignore above a
// key the documentation shows as the analyzer's finding).
//
// The file must be one the go command compiles: a .go file that matches the
// build constraints of the machine running the test, outside testdata and
// directories starting with "_" or ".". Test files (_test.go) are the usual
// home: Example functions, or tests that also run against PostgreSQL.
//
// # The check
//
// TestDocsMatchTheirSources walks README.md and docs/**/*.md. For each
// ```go block it finds the marker, reads the region, strips the common
// indentation of both texts, formats both with go/format, and compares. It
// fails, naming the markdown file and line and the snippet, on drift (with
// the first differing line), on a block without a marker, on a marker not
// directly above a ```go block, on a missing file or region, on a region
// left open, and on a source that does not parse. To copy sources into the
// markdown after changing them:
//
//	go test ./internal/docsnippets -run TestDocsMatchTheirSources -update
package docsnippets
