// Package stripeeffect turns Stripe calls, made with the real stripe-go v76
// client, into idempotency effects: creating a one-time promotion code
// (PromotionCodeEffect), deactivating one (DeactivatePromotionCodeEffect),
// refunding a payment (RefundEffect) and crediting a customer's balance
// (CreditEffect). The plain functions behind them (CreatePromotionCode,
// DeactivatePromotionCode, CreateRefund, CreditBalance) can be called on
// their own, and FindPromotionCode, FindRefund and FindCredit tell whether
// the object a key would create already exists (FindDeactivatedPromotionCode
// whether a code is already inactive).
//
// # The key
//
// The key the executor passes is sent as Stripe's Idempotency-Key on every
// request, in-run retries included, and its business key (Key.Base) is
// stored in the created object's metadata under MetadataKey, so that the
// Find functions, or an operator, can find the object when a record is in
// doubt. The two differ only after a reconciliation: when Stripe has
// nothing for a key that may replay a saved failure, the executor sends
// again under a new provider-key generation (the key followed by "~g2"),
// whose metadata still holds the business key, so every generation is found
// by the same lookup. A call with the zero key returns ErrNoKey and sends
// nothing: stripe-go would otherwise invent a random key, which protects
// only its own retries of that one call and nothing across deliveries.
// stripe-go builds the request, headers included, once per call and sends
// that same request on each of its own network retries, so the key survives
// those too.
//
// # Who retries
//
// One layer owns retries, so that they do not multiply: the executor.
// NewAPI builds a client with stripe-go's own retries off
// (MaxNetworkRetries 0), and the effects of this package set Effect.Retry
// to a copy of DefaultRetry (3 attempts, 0.5 s then 1 s apart, honouring
// Retry-After up to 5 s), which is what stripe-go does by default. While it
// holds the claim, the executor retries in-run, always under the same key,
// an error that proves Stripe did nothing (NotActed) and, because Stripe
// deduplicates (ExpiredRetry), one that leaves it unknown (Unknown);
// otherwise it lets the claim go for the next run. With stripe-go's retries
// left on as well, each executor attempt would make up to 3 requests and
// sleep in stripe-go, out of reach of the context, while holding the claim.
//
// # Classification
//
// Classify maps every stripe-go error to a class that says what Stripe may
// have done. Stripe saves the response to a keyed request once the endpoint
// began executing, a 500 included, and replays it for 24 hours; it saves
// nothing for a request it refuses before executing.
//
//	stripe-go error                                class       what the executor does
//	--------------------------------------------   ---------   --------------------------------------
//	transport error before the request was         NotActed    retry in-run; else release: the key is
//	  written: refused connection, failed TLS                  free at any age
//	  handshake, context done first (ErrNotSent)
//	409 / code idempotency_key_in_use              NotActed    as above, after backing off
//	429 rate_limit or lock_timeout                 NotActed    as above, after Retry-After
//	401                                            NotActed    as above (a key to fix, not a refusal)
//	transport error after the request was          Unknown     retry in-run under the same key; else
//	  written: timeout, lost response, context                 the record waits for a retry inside the
//	  done while waiting                                       24 hours, or for Find past them
//	other 5xx                                      Unknown     as above, after Retry-After
//	5xx, Idempotent-Replayed: true                 Reconcile   no retry under the key: in doubt until
//	5xx, Stripe-Should-Retry: false                Reconcile     Find settles it (or an operator)
//	type idempotency_error (400)                   Mismatch    mark failed, report a mismatch
//	400 invalid_request_error                      Permanent   mark failed: nothing happened at Stripe
//	                                                           (the key is free), but the same request
//	                                                           would be refused again
//	402 card_error, other 4xx                      Permanent   mark failed: refused, nothing created
//
// "Written" means handed in full to the connection, as net/http's
// httptrace WroteRequest reports it: the adapters trace every request and
// wrap ErrNotSent around a transport error met before that point. A request
// that then failed to leave the machine is still Unknown, the safe side, and
// so is a transport error handed to Classify without the trace.
//
// A saved 5xx will never succeed under its key, and the object may or may
// not exist (Stripe may have failed before or after writing it): the record
// is left in doubt, and the next run asks Stripe instead of retrying.
//
// # Evidence
//
// Every adapter call reports Stripe's answer to the executor's attempt with
// idempotency.Observe: the HTTP status, Stripe's Request-Id and whether the
// answer was a replay (Idempotent-Replayed), on success and on a Stripe
// error alike. The executor keeps them in the record's Evidence with the
// attempt's class and provider-key generation, so an operator can quote the
// request ids to Stripe. When no answer came back (a transport error) the
// status is zero and there is no request id.
//
// # Replays and the dedup window
//
// A successful response that Stripe replayed (a takeover after a worker
// crashed between the call and the record, or a retry after a response was
// lost) is a success like any other: the result carries Replayed: true, and
// the ledger records the object the first request created. The effects set
// Expired to idempotency.ExpiredRetry and DedupWindow to 24 hours: a record
// whose attempt may have acted is retried under the same key while a whole
// run fits in the window, and Stripe replays the first result; past it
// Stripe has forgotten the key, so the record is in doubt and the next run
// asks Stripe (Find) instead of calling. A record whose attempts all proved
// that Stripe did nothing (a night of 429s) is free at any age: the next
// run simply sends. Deactivation is safe to repeat and has no window.
//
// Each effect's fingerprint is the JSON of the request its build function
// returns, so a key reused with another payload stops at the executor with
// a *idempotency.MismatchError before Stripe would refuse it with an
// idempotency_error.
//
// # Finding an object
//
// When an attempt's outcome is unknown (a lost response, a worker that died
// after calling, a saved 500, a key past Stripe's 24 hour memory), asking
// Stripe whether the object exists settles it without calling again.
// FindPromotionCode, FindRefund and FindCredit take the request value of
// the matching create adapter, list its scope (the coupon's codes for the
// customer, the payment intent's refunds, the customer's balance
// transactions) with stripe-go's auto-paging iterator, newest first in
// pages of 100, and match the business key stored under MetadataKey. They
// send no creating request. A found object comes back as the create
// adapter's result, so the ledger records it as it would a created one; no
// object is false with a nil error; a page that could not be read is an
// error, and then nothing is known. Lists see every write at once; the
// Search API, which lags behind writes and covers neither promotion codes
// nor refunds, is not used.
//
// PromotionCodeEffect, RefundEffect and CreditEffect set them as
// Effect.Find, with the request built from the input. The executor calls
// Find only under a claim on a record in doubt, once the last attempt's
// lease has ended (a lookup racing a request still executing could miss
// the object it is about to create): found, the record is applied with the
// object and no call (OutcomeReconciled); not found, the request is sent
// again under the next key generation. Set Find to nil to leave records in
// doubt to an operator (idempotency.Operator).
//
// A deactivation creates nothing, so DeactivatePromotionCodeEffect's Find,
// FindDeactivatedPromotionCode, reads the code instead (one GET): inactive
// is found, whoever deactivated it; active is not found, and sending the
// deactivation again is harmless.
//
// The business key (Key.Base) is matched exactly, whatever generation the
// Find function is given. An object made without MetadataKey (by other
// code, or with its metadata edited since) is not found. A lookup stops at
// the first match, so it does not report a second object under the same key
// (possible only when the key was reused after Stripe forgot it); when no
// object matches it reads the whole scope, one list call per 100 objects.
//
// # Testing
//
// Package stripefake is an in-process fake Stripe with Stripe's idempotency
// rules (replays, 409 in flight, idempotency_error, the 24 hour window) and
// fault injection; point NewAPI at it with APIConfig.URL. The package's own
// tests also check every request shape against stripe-mock when
// STRIPE_MOCK_URL is set.
package stripeeffect
