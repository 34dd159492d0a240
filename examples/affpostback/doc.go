// Package affpostback fires an affiliate network's postback once per
// conversion. It demonstrates hazards 15 and 5 of DESIGN.md: the receiver
// ignores idempotency keys, so the claim before the call is the only guard,
// and a claim left by a dead worker is retried only if its call never
// started; otherwise it waits for reconciliation, never for a blind retry.
//
// A postback is a GET to the network's URL with the click id, our
// conversion id (txid) and the payout. The network counts every request it
// receives as a conversion and pays the affiliate for it, whatever headers
// it carries.
//
// What it shows:
//
//   - The key is the conversion id (KeySpace "aff.postback"). The
//     Idempotency-Key header is sent anyway (httpeffect never sends a
//     request without one); this receiver ignores it.
//   - httpeffect with Config.ReceiverIgnoresKey: the default client opens a
//     connection per request, so net/http never re-sends the GET by itself;
//     answers that leave the postback's fate unknown (the connection lost
//     after the request was written, 500, 502, 504) are parked for
//     reconciliation; refusals that say nothing happened (503, 429, 408,
//     425, a request never written) release the claim and the next tick
//     fires again.
//   - Expired: idempotency.ExpiredRetryUncalled. The executor records the
//     start of the call (one more statement per first-time run) before the
//     request goes out, so a worker that died after claiming but before
//     calling is taken over once its lease (one minute) expires, while one
//     that died after the call started is parked: the network may have
//     counted it. Parked postbacks are reported by every Tick
//     (OutcomeNeedsReconciliation in the Report's Failures), listed by
//     Store.ListStuck, and resolved with Settle after someone checked the
//     network's report.
//   - Any other 4xx (400 unknown click, 404, 422...) is a refusal: the
//     ledger marks the record failed and Tick (or Deliver) writes a
//     postbacks row with status failed and the HTTP status, which keeps
//     the conversion out of later ticks. Failed
//     rows are exempt from uq_postbacks_active: delete one, once the cause
//     is fixed, and the next tick fires again under the same key.
//   - Deliver is the event path (a queue consumer that learns of the
//     conversion as it happens); Tick is the cron catch-up. They share the
//     key, so however they overlap, the network is hit once.
//
// Files: schema.sql (the migration), affpostback.go (candidates, the
// effect, the tick, settling), affpostback_test.go and contract_test.go
// (integration tests on PostgreSQL against a fake network written in
// network_test.go).
package affpostback
