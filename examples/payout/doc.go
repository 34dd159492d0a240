// Package payout makes one money transfer per payout request, through a
// payouts provider that takes its idempotency key only as a UUID. It
// demonstrates hazards 1, 5 and 13 of docs/hazards.md: the provider's key
// is a UUID derived from the business key (Key.UUID), never a random one; a
// transfer whose answer was lost is repaired by sending the same UUID
// again; and a failure the provider saved under a UUID is settled by asking
// the provider, then sending under a new generation.
//
// The provider (a transfers API of the kind payout and banking-as-a-service
// platforms offer) makes a transfer for POST /v1/transfers and
// deduplicates by client_transaction_id, a UUID in the request body: a
// repeat within its 24-hour window is answered with the transfer made
// first. It lists transfers by reference with GET
// /v1/transfers?reference=....
//
// What it shows:
//
//   - The key is the payout request id (KeySpace "payouts.transfer"), and
//     client_transaction_id is Key.UUID(): a deterministic version-5 UUID
//     of the key under a fixed namespace of the library, pinned by its
//     tests. Every delivery of one payout request sends the same UUID. A
//     random UUID (uuid.New()) would be a new transaction on every retry:
//     hazard 1 in another form.
//   - A lost answer (the provider made the transfer, then the connection
//     dropped) is an unknown outcome: the effect uses ExpiredRetry with the
//     provider's 24-hour DedupWindow, so the in-run retry, or the next run
//     after a crash, sends the same UUID and gets the original transfer
//     back. Exactly one transfer.
//   - Like Stripe, the provider saves the first answer under a UUID once
//     it started executing, a 500 included (hazard 13). A replayed 500 is
//     classified as needing reconciliation and the record is parked. The
//     effect has a Find, so the next delivery asks the provider; it has
//     nothing, and the executor sends again under provider-key generation
//     2 (Key.WithGeneration): the ledger key stays the same, the UUID is
//     a new one.
//   - The UUID changes with the generation, because Key.UUID is computed
//     from Key.String(). So Find cannot look a transfer up by
//     client_transaction_id: listing by the UUID of key.Base() would miss
//     a transfer made under generation 2, and the next generation would pay
//     again. Every transfer instead carries reference =
//     Key.Base().UUID(), the same for every generation, and Find lists by
//     it. That UUID rather than the readable business key, because a
//     reference reaches the provider (and often the bank statement): it is
//     opaque, of fixed length, and holds no raw id. At generation 1 the two
//     UUIDs are equal.
//   - Past the provider's window a retry under the same UUID would make a
//     second transfer. A record whose transfer may have been made is then
//     never retried: Find decides (found: recorded with no request).
//   - The fingerprint is the money movement (recipient, amount,
//     currency): the same payout request with another amount is a
//     mismatch, and no transfer.
//   - Statuses of payout_transfers: sent is active and guarded by
//     uq_payout_transfers_active; failed (the provider refused: an
//     unknown recipient) is exempt and keeps the request out of later
//     ticks.
//   - Pay is the event path (a consumer of "payout approved"); Tick is the
//     cron catch-up. They share the key, so however they overlap, one
//     transfer is made.
//
// Files: schema.sql (the migration), payout.go (the effect, Find,
// candidates, the tick), payout_test.go and contract_test.go (integration
// tests on PostgreSQL against a fake payouts provider written in
// provider_test.go).
package payout
