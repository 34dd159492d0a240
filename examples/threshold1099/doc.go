// Package threshold1099 sends one 1099 threshold notice per payee per tax
// year. It demonstrates hazard 1 of DESIGN.md: the business period in the key
// (the tax year) comes from the payout dates in the data, never from the
// clock, so a tick on December 31 and one on January 1 agree on every key.
//
// A payee whose payouts in one tax year reach $600 (ThresholdCents) is
// emailed once for that year, through a provider that deduplicates by the
// Idempotency-Key header, reached with package httpeffect.
//
// What it shows:
//
//   - The key is payee + tax year (KeySpace "tax1099.threshold"). The tax
//     year is payouts.tax_year, a generated column that reads paid_at in
//     the tax time zone, America/New_York (schema.sql is the only place
//     that names it): a payout at 2026-01-01 03:00 UTC is 22:00 on New
//     Year's Eve in New York, so it counts toward 2025.
//   - Tick takes no time argument. The payouts table holds money already
//     paid, so the data alone says which years are due; nothing a tick
//     computes depends on when it runs. (A team that also stores scheduled
//     payouts filters them by status, still not by the clock.)
//   - More payouts after the notice change nothing: the candidate query
//     leaves out payee-years with an active notice, the ledger's batch
//     pre-flight stops any that slip through, and the fingerprint covers
//     the message (sender, recipient, text) but not the growing year total.
//   - A crash after the email went out and before the row was written is
//     repaired by the next tick once the lease expires: the claim is taken
//     over (ExpiredRetry) and the provider replays the first message under
//     the same key. Past the provider's 24-hour window (DedupWindow) the
//     claim is parked for reconciliation instead: a retry would send a
//     second email.
//   - Statuses of threshold_notices: sent and skipped (no address on file)
//     are active and guarded by uq_threshold_notices_active; failed (the
//     provider refused the address, written by Tick) and revoked are
//     exempt. A failed row keeps its payee-year out of later ticks until
//     the payee's address changes.
//
// Files: schema.sql (the migration), threshold.go (candidates, the effect,
// the tick), threshold_test.go and contract_test.go (integration tests on
// PostgreSQL against a fake email provider written in provider_test.go).
package threshold1099
