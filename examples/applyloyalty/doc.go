// Package applyloyalty is the reference adapter for the incident this
// library comes from: a Pro subscriber who completes 12 months gets one 10%
// Stripe promotion code ("anniversary loyalty bonus"), from a cron job that
// runs every 30 minutes with at-least-once, sometimes overlapping ticks.
//
// What it shows:
//
//   - The key is user + subscription + milestone, all from the database.
//     The original job keyed on floor(now / 30 days): two overlapping ticks
//     at a bucket boundary sent two keys, and Stripe rightly made two codes.
//   - The subscription is in the key, so cancel-and-resubscribe earns a
//     fresh code after the old one was revoked (hazard: re-earning after
//     revocation).
//   - The ledger claim stops the second of two overlapping ticks before it
//     calls Stripe, and the partial unique index on loyalty_discounts
//     (one active row per user; revoked rows exempt) is the last word.
//   - A crash after Stripe created the code and before the row was written
//     is repaired by the next tick: the claim is taken over after its lease
//     and Stripe replays the same code under the same key.
//
// Files: schema.sql (the migration), loyalty.go (candidates, the effect, the
// tick, revocation), loyalty_test.go (integration tests on PostgreSQL and
// the fake Stripe). Package remediate, beside it, is the sweep that cleaned
// up the incident's duplicates before the unique index could be built.
package applyloyalty
