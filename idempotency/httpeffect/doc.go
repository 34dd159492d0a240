// Package httpeffect adapts a provider reached over plain HTTP (an
// affiliate postback, a partner's refund endpoint, a mail service) to
// idempotency.Effect.
//
// Every request carries the effect's key in a header, "Idempotency-Key" by
// default as in the IETF HTTPAPI draft, or the name the receiver expects.
// The key is set on every attempt, in-run retries included, and a request
// without a key is never sent. Answers are classified for the executor:
// 2xx is success; network errors, 408, 425, 429 and 5xx are retryable
// (honouring Retry-After); 409 (the draft's "a request with this key is in
// flight") is retryable; 422 (the draft's "key reused with another
// payload") is a mismatch; other 4xx are permanent. See Do.
//
// # Request bodies
//
// The effect calls its build function once per attempt, so every attempt
// sends a freshly built request and body. Build it from the input only,
// never from state an earlier attempt changed.
//
// # Receivers that ignore the key
//
// The adapter works with receivers that know nothing of the header. There,
// the ledger's claim is what makes the effect happen once: overlapping
// deliveries of one intent stop at the claim, before any request, and a
// finished intent is answered from the ledger. What the claim cannot tell
// is whether a request whose answer was lost reached the receiver; a
// retry could then repeat the effect. Set Config.ReceiverIgnoresKey for
// such receivers: ambiguous failures are parked for reconciliation instead
// of retried. Give the effect idempotency.ExpiredRetryUncalled (or keep the
// default ExpiredPark): a claim left by a worker that crashed before its
// request is then taken over, and one whose request had started is parked,
// never retried blindly. examples/affpostback shows the whole pattern.
//
// Receivers that do deduplicate by the key (and replay their first answer)
// make retries safe within their dedup window; set the effect's Expired
// and DedupWindow accordingly. If such a receiver replays a saved 5xx for
// ever, classify it yourself with idempotency.Reconcile: a retry will not
// change its answer.
//
// The package depends on the standard library only.
package httpeffect
