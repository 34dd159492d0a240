// Package remediate cleans up what the incident left before the guard
// existed: users holding two active loyalty_discounts rows and two live
// Stripe promotion codes. It keeps each user's oldest code, deactivates the
// others at Stripe and revokes their rows, credits each affected user one
// month of Pro and sends each one apology email. Done by hand, that is where
// a second incident starts: a script re-run after a timeout revokes or
// credits twice. Here every step is an effect of the library, so the whole
// is safe to re-run after any crash, and concurrently with itself.
//
// The steps and their keys (business identity only; the incident id is an
// input, never the clock):
//
//	step        key                                     provider             in the same transaction as the ledger
//	plan        -                                       -                    pgguard.Audit, oldest first; loyalty_remediations
//	deactivate  loyalty.remediate.deactivate  promo     Stripe (its own key) the row revoked; the row's own ledger record revoked
//	credit      loyalty.remediate.credit      user, incident  Stripe balance
//	apology     loyalty.remediate.apology     user, incident  mail provider (Idempotency-Key)
//
// The plan (loyalty_remediations) is written once per duplicate, under one
// incident: later runs work from it, since a revoked duplicate no longer
// shows in the audit but its user may still be owed the credit and the
// email. The credit waits until all of a user's duplicates are deactivated,
// and the email until the credit is given: it says what was done.
//
// Which ledger record a duplicate row has: the one under the row's own
// idempotency_key. The incident's duplicates were made by the old
// clock-keyed job, whose keys the ledger never saw, so normally there is
// none. A duplicate written through the ledger (the new job overlapping the
// old one during the deploy) has one naming its code, and it is revoked
// with the row, as Program.Revoke does. The anniversary key of a code the
// user keeps is never revoked.
//
// Run it with DryRun first: it plans inside a transaction that it rolls
// back and reports what would change and what it would cost. The command
// in cmd/remediate wraps both.
//
// Files: schema.sql (the plan table), remediate.go (the steps), report.go
// (what a run did), cmd/remediate (the command), and tests on PostgreSQL,
// the fake Stripe and a fake mail provider that reproduce the incident's
// shape (200 subscribers, 28 with two codes), kill a run half way (in
// process and as a real process) and build the index afterwards.
package remediate
