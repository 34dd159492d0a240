// Package checkoutwebhook is an inbound Stripe webhook endpoint (net/http)
// that provisions a paid Checkout Session once: it grants a license at a
// license service (through httpeffect, which deduplicates by
// Idempotency-Key) and writes the provisionings row. It demonstrates
// hazards 1, 8, 5 and 7 of docs/hazards.md: the key is the checkout
// session, never the event id, which differs between the two events Stripe
// sends for one checkout; concurrent deliveries are stopped by the claim,
// not by a look at the table; a grant whose record was lost is repaired by
// Stripe's redelivery under the same key; and two events that disagree on
// what to provision are a mismatch, not a second grant.
//
// Stripe delivers each event at least once, retries anything but a 2xx for
// up to three days, may deliver out of order, and sends two events for one
// checkout when the payment settles later (checkout.session.completed with
// payment_status unpaid, then checkout.session.async_payment_succeeded).
//
// What it shows:
//
//   - The signature is checked first, with stripe-go's own webhook package
//     (webhook.ConstructEventWithOptions: the Stripe-Signature header, a
//     5-minute tolerance, the API version stripe-go v76 expects). A missing
//     or bad signature, a stale timestamp, a malformed body, or a
//     checkout event without a session is answered 400 before anything is
//     written; a body over MaxBody is 413.
//   - Each verified event is recorded once in stripe_events (INSERT ... ON
//     CONFLICT (event_id) DO NOTHING), in its own statement, before the
//     provisioning runs. Recording it inside the provisioning's completion
//     transaction would keep only the event whose delivery provisioned;
//     this way every event is on record, whatever its delivery did (in
//     flight elsewhere, failed, already done by the other event), and each
//     delivery then notes its outcome and disposition on the row
//     (deliveries, last_outcome, last_disposition, last_error). The
//     provisionings row names the event that provisioned.
//   - The provisioning is an effect keyed by the checkout session
//     (KeySpace "checkout.provision"): twenty concurrent deliveries of one
//     event, or both events of one session, make one call to the license
//     service and one row. A session paid in neither event's view is
//     acknowledged with nothing done (unpaid); whichever paid event comes
//     first provisions, in any order.
//   - The answer follows Result.Disposition: ack is 200; retry (in flight
//     elsewhere, not due, a retryable failure, a store error) is 503 with
//     Retry-After from the disposition's delay, so Stripe redelivers; dead
//     letter (a refusal, a mismatch, a record in doubt) is 200, because no
//     redelivery can help, with the event marked dead_letter and the
//     ledger record left for an operator. The full table is on
//     Program.ServeHTTP.
//   - The license service deduplicates by key for 24 hours (DedupWindow),
//     so the effect keeps httpeffect's ExpiredRetry: a handler killed after
//     the grant leaves its claim, and Stripe's next delivery after the
//     lease (one minute) takes it over under the same key and gets the
//     first license back. A delivery past the window is parked
//     (needs_reconciliation, 200, Store.ListStuck), never retried.
//   - Tick is the catch-up: it provisions, from the recorded events, the
//     paid sessions Stripe stopped redelivering before one delivery was
//     acknowledged.
//   - Statuses of provisionings: provisioned is active and guarded by
//     uq_provisionings_active; failed (the license service refused) and
//     revoked are exempt.
//
// Files: schema.sql (the migration), checkoutwebhook.go (the effect, the
// catch-up tick), handler.go (the endpoint and its status table),
// checkoutwebhook_test.go and contract_test.go (integration tests on
// PostgreSQL with payloads signed the way Stripe signs them, against a
// fake license service written in licenses_test.go).
package checkoutwebhook
