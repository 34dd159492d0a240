// Package httpeffect adapts a provider reached over plain HTTP (an
// affiliate postback, a partner's refund endpoint, a mail service) to
// idempotency.Effect.
//
// Every request carries the effect's key in a header, "Idempotency-Key" by
// default as in the IETF HTTPAPI draft, or the name the receiver expects.
// The key is set on every attempt, in-run retries included, and a request
// without a key is never sent. Answers are classified by what they prove
// the receiver did (see Do): 2xx and 3xx are done (a redirect answering a
// write says the receiver handled it); 408, 409, 425, 429 and 503 and a
// request never written say it did not act (retried, honouring
// Retry-After); 422 is the draft's mismatch; other 4xx are refusals; 5xx
// and an answer lost after the request was written leave it unknown; a
// replayed 5xx needs reconciliation. Each answer's status, request id and
// replay flag go into the attempt's evidence in the ledger.
//
// # Safety settings
//
// Effect sets them from Config, at the level of package stripeeffect's, so
// that nothing has to be copied from an example:
//
//	setting       receiver deduplicates by the key      Config.ReceiverIgnoresKey
//	Expired       ExpiredRetry                          ExpiredRetryUncalled
//	DedupWindow   Config.DedupWindow (default 24 h)     none
//	Fingerprint   method, URL and body                  method, URL and body
//	Retry         DefaultRetry, 3 attempts              DefaultRetry, only what did not act
//	unknown outcome   retried under the same key        in doubt: Find or an operator
//
// # Request bodies
//
// The effect calls its build function once per attempt, and once per run
// for the fingerprint, so every attempt sends a freshly built request and
// body. Build it from the input only, never from state an earlier attempt
// changed (or the clock: a body that carries the time changes the
// fingerprint on every delivery; set Fingerprint yourself then).
//
// # Receivers that ignore the key
//
// The adapter works with receivers that know nothing of the header. There,
// the ledger's claim is what makes the effect happen once: overlapping
// deliveries of one intent stop at the claim, before any request, and a
// finished intent is answered from the ledger. What the claim cannot tell
// is whether a request whose answer was lost reached the receiver; a
// retry could then repeat the effect. Set Config.ReceiverIgnoresKey for
// such receivers: the effect records the start of each call, takes over a
// claim whose request never started, and leaves a record whose request
// may have acted in doubt, never retried blindly. Give the effect a Find
// (ask the receiver's API whether the postback exists) and such records
// settle themselves; without one an operator settles them.
// examples/affpostback shows the whole pattern.
//
// The package depends on the standard library only.
package httpeffect
