// Package idempotency makes an external side effect (a Stripe promotion
// code, a refund, an email, a postback) happen once per business intent,
// even when the trigger delivers at least once: overlapping cron ticks,
// queue redeliveries, webhook retries.
//
// It combines four things, each insufficient alone:
//
//   - a stable key built from business identity only (KeySpace, Str, Int),
//     never from the clock, sent to the provider as its Idempotency-Key;
//   - a ledger (Store) holding at most one active record per key, in one
//     named State, claimed before the provider call so a second worker stops
//     before calling;
//   - a pre-flight lookup (Store.Lookup) so finished work never spends
//     provider quota;
//   - outcomes that say what happened (Result.Outcome) and what a queue
//     consumer does about it (Result.Disposition), instead of errors a
//     caller must decode.
//
// An Effect describes one kind of side effect; Run performs one delivery
// of its intent through an Executor. The package depends on the standard
// library only. The Postgres store lives in package pgguard, Stripe
// adapters in package stripeeffect, the plain-HTTP adapter in httpeffect,
// and the conformance suite every Store must pass in storetest.
//
// # Flow of one run
//
//  1. Key and payload fingerprint are computed from the input, once.
//  2. Claim or fetch, in one store round trip, decided by Decide from the
//     record's state: applied or skipped returns the stored result with no
//     provider call; held under a live lease is in flight elsewhere; not
//     yet due is not due; another payload is a *MismatchError; a record
//     whose call may have acted is retried under the same key where the
//     provider deduplicates (ExpiredRetry, inside its window), reconciled
//     by asking the provider (Effect.Find), or reported in doubt.
//  3. Call the provider with the key, each attempt through the executor's
//     Middleware, retried in-run as the RetryPolicy and the error's Class
//     allow, never past the provider's window.
//  4. Complete: mark applied and store the result and the attempts'
//     evidence, only while the fencing token still matches, together with
//     the caller's OnComplete hook. A success whose completion is refused
//     is recovered, never lost.
//  5. Otherwise record what the provider may have done: released (it did
//     not act, free once due), unknown (retry under the same key), failed
//     (it refused), or in doubt (Find or an operator settles it: Operator,
//     and the effectonce command).
//
// The states, the claim rule and who may change what are drawn in
// docs/state-machine.md; the outcomes, their errors and their dispositions
// are one table on Outcome.
package idempotency
