// Package keyclock defines an analyzer that reports idempotency keys derived
// from the clock or from randomness.
//
// An idempotency key must name a business intent: the same intent must give
// the same key on every delivery, on every machine, at any time. A key built
// from time.Now (a 30-day bucket, a date, a Unix timestamp) changes value at
// some instant, and a key built from math/rand, crypto/rand or a random UUID
// changes on every call; two deliveries of one intent then carry two keys
// and the provider performs the effect twice.
//
// # What it reports
//
// The analyzer follows values from a source to a sink and reports each such
// flow once, at the sink, with the path it took:
//
//	idempotency key derived from the clock: time.Now → .UnixMilli → / → idempotency.Int("bucket")
//
// Sources are time.Now, time.Since and time.Until (and every time value or
// duration computed from them), the package-level functions of math/rand and
// math/rand/v2 (a generator seeded from business data is not a source; one
// seeded from the clock is), crypto/rand (Read, Text, Int, Prime, Reader),
// the generating functions of github.com/google/uuid (New, NewString,
// NewRandom, NewUUID, NewV6, NewV7, ...; the name-based NewMD5 and NewSHA1
// are not sources), and the functions named with the -sources flag.
//
// Sinks are the arguments and receivers of this library's key builders
// (every function or method of package idempotency that returns a Key or a
// Part, such as Str, Int, KeySpace.Key, KeySpace.MustKey and
// Key.WithGeneration, and every method of KeySpace), stripe-go's Params.SetIdempotencyKey and the
// Params.IdempotencyKey field (any major version), and http.Header (or
// textproto.MIMEHeader) Set, Add and direct map assignment under the header
// "Idempotency-Key" in any case, under a header name stored in an
// httpeffect.Config's HeaderName in the package or in one it imports, and
// under the names given with the -headers flag. A value derived from a key
// already reported (k.String(), k.UUID()) is not reported again.
//
// Values taken from business data (a struct field such as payout.PaidAt, a
// column read from the database, a function parameter) are not sources:
// deriving a tax year from a payout date is right.
//
// Within a function, flow is followed through assignments, arithmetic,
// comparisons, conversions, string concatenation, local variables, local
// struct fields, arrays, slices and maps (map contents as a whole), closures
// reading captured variables, and calls into the standard packages that only
// transform data (time, fmt, strconv, strings, bytes, encoding/hex,
// encoding/base64, hash functions, math, slices, ...), including writes into
// a strings.Builder, a bytes.Buffer or a hash. Across functions, each
// function is summarised (its result derives from a source; a parameter
// reaches its result; a parameter reaches a sink) and the summary is
// exported as a fact, so a helper returning a clock-derived string is
// reported where its result becomes a key, in the same package or in an
// importing one. Calls through interfaces and function values, struct
// fields of values outside the function, globals, channels, reflection and
// values that went through a database or a network are not followed.
//
// # Suppressing a report
//
// A report is suppressed by a comment on its line, or alone on the line
// just above it, that starts with //effectoncevet:ignore followed by a
// reason:
//
//	//effectoncevet:ignore the contract test must see a clock-derived key
//	return keys.Key(idempotency.Int("bucket", time.Now().UnixNano()))
//
// A directive without a reason is itself reported and suppresses nothing.
//
// # Flags
//
//	-headers  comma-separated header names that also carry an idempotency key
//	-sources  comma-separated functions that also count as sources, as
//	          importpath.Func or importpath.Type.Method, for example
//	          github.com/oklog/ulid/v2.Make
//
// The effectoncevet command runs this analyzer alone; Analyzer can also be
// added to a multichecker (golangci-lint needs a module plugin wrapping it).
package keyclock
