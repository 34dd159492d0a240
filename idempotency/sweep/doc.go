// Package sweep runs an effect over many candidates, as a cron job does:
// "for every Pro subscriber who completed 12 months, create the anniversary
// promotion code".
//
// A sweep is cheap when most of the work is already done, which is the
// normal case for a job that runs every 30 minutes over the same
// population:
//
//   - Candidates are pre-flighted in batches: one Store.Lookup per batch
//     (one query for the Postgres store), never one per candidate. Those
//     already applied are counted and skipped with no claim and no provider
//     call, so finished work spends neither database round trips nor
//     provider quota.
//   - The rest are claimed in one statement per batch, when the store can
//     (idempotency.BatchStore), and run with bounded concurrency, each by
//     the executor's own flow from its claim; their completions are written
//     in groups. Other stores claim run by run (idempotency.Run). The
//     pre-flight is an optimisation, never the guard: between the lookup
//     and the call another sweep may act, and the claim decides.
//   - An optional rate limiter spaces provider calls only; claims, lookups
//     and skipped candidates do not consume it.
//   - One bad candidate (a key that cannot be built, a provider refusal) is
//     reported and the sweep goes on. Cancelling the context stops taking
//     candidates and returns a partial Report; runs in flight record their
//     result or release their claim, so the next sweep finds every key
//     either applied or free.
//
// The Report counts what happened (outcomes, provider calls made, lookups,
// candidates saved by the pre-flight) and lists the failures, for the job's
// log and metrics. A Failure prints its key as the namespace only when the
// key was built in HMAC mode.
//
// The package depends on golang.org/x/sync and golang.org/x/time, which is
// why it is not part of package idempotency.
package sweep
