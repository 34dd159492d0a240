// Package idempotency makes an external side effect (a Stripe promotion
// code, a refund, an email, a postback) happen once per business intent,
// even when the trigger delivers at least once: overlapping cron ticks,
// queue redeliveries, webhook retries.
//
// It combines four things, each insufficient alone:
//
//   - a stable key built from business identity only (KeySpace, Str, Int),
//     never from the clock, sent to the provider as its Idempotency-Key;
//   - a ledger (Store) holding at most one active record per key, claimed
//     before the provider call so a second worker stops before calling;
//   - a pre-flight lookup (Store.Lookup) so finished work never spends
//     provider quota;
//   - outcomes that say what happened (Result.Outcome) instead of errors a
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
//  2. Claim or fetch, in one store round trip. Applied or skipped: return
//     the stored result with no provider call. Pending under a live lease:
//     in flight elsewhere. Pending with an expired lease: take it over
//     (ExpiredRetry, inside the provider's dedup window) or report it as
//     needing reconciliation (ExpiredPark, the default).
//  3. Call the provider with the key.
//  4. Complete: mark applied and store the result, only while the fencing
//     token still matches, together with the caller's OnComplete hook.
//  5. On failure: release the claim (retryable), mark it failed
//     (permanent), or park it for an operator (unknown outcome).
package idempotency
