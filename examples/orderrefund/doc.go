// Package orderrefund issues one Stripe refund per refund request on an
// order. It demonstrates hazard 7 of DESIGN.md (the same request id with
// another amount is a *idempotency.MismatchError, and Stripe is not called)
// and hazard 5 (a refund whose response was lost is recorded by the next
// run under the same key, from Stripe's replay, never made twice).
//
// A refund request arrives through a queue, at least once (Refund), and a
// tick sweeps up the requests the queue missed (Tick).
//
// What it shows:
//
//   - The key is order + refund request (KeySpace "orderrefund.refund"),
//     never the order alone: two requests on one order are two refunds.
//     The fingerprint is the Stripe request, so it covers the amount: a
//     request whose amount was edited after its refund is refused.
//   - An order's refunds never exceed what it paid, and an over-refund
//     never reaches Stripe. The check lives in the effect's Call, not in
//     the candidate query: a query cannot see a concurrent request, and
//     would leave an over-limit request pending for ever with no trace.
//     Call reserves the amount (a refunds row in status reserved) in a
//     short transaction that locks the order row, then commits before
//     Stripe is called; the second of two concurrent requests that do not
//     both fit waits for the lock, sees the first one's reservation and is
//     refused (ErrExceedsPaid, permanent, a failed row, no Stripe request).
//   - The reservation is the database layer of the guard, and holds even
//     if the key breaks: a request reserved under one key is never sent to
//     Stripe under another (a deploy that changed the key); it waits for
//     reconciliation instead.
//   - The reservation has a way back: if Stripe refuses (its own
//     amount_too_large, say after a refund made in the dashboard, which
//     stays the last line of defence), it is marked failed and frees the
//     amount. When the outcome is unknown (a lost response, a crash) it
//     stays held until the next run learns the answer from Stripe's replay.
//   - Statuses of refunds: reserved, pending and succeeded are active and
//     guarded by uq_refunds_active (one per request); failed is exempt and
//     keeps its request out of later ticks.
//
// Files: schema.sql (the migration), orderrefund.go (the effect, the
// reservation, the queue path and the tick), orderrefund_test.go and
// contract_test.go (integration tests on PostgreSQL and the fake Stripe).
package orderrefund
