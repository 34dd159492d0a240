// Package stripeeffect turns Stripe calls, made with the real stripe-go v76
// client, into idempotency effects: creating a one-time promotion code
// (PromotionCodeEffect), deactivating one (DeactivatePromotionCodeEffect),
// refunding a payment (RefundEffect) and crediting a customer's balance
// (CreditEffect). The plain functions behind them (CreatePromotionCode,
// DeactivatePromotionCode, CreateRefund, CreditBalance) can be called on
// their own, and FindPromotionCode, FindRefund and FindCredit tell whether
// the object a key would create already exists.
//
// # The key
//
// The effect's key is sent as Stripe's Idempotency-Key on every request,
// in-run retries included, and stored in the created object's metadata
// under MetadataKey so that the Find functions, or an operator, can find
// the object when a record needs reconciliation. A call with the zero key
// returns ErrNoKey and sends nothing: stripe-go would otherwise invent a
// random key, which protects only its own retries of that one call and
// nothing across deliveries.
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
// Retry-After up to 5 s), which is what stripe-go does by default. The
// executor retries a Retryable error in-run while it holds the claim,
// always with the same key, and otherwise releases the claim for the next
// run. With stripe-go's retries left on as well, each executor attempt
// would make up to 3 requests and sleep in stripe-go, out of reach of the
// context, while holding the claim.
//
// # Classification
//
// Classify maps every stripe-go error to the class that tells the executor
// what to do with the claim:
//
//	stripe-go error                               class       executor
//	-------------------------------------------   ---------   -------------------------------------
//	network error, timeout, cancelled context     Retryable   release (or retry in-run), same key
//	409 / code idempotency_key_in_use             Retryable   same key in flight elsewhere: back off
//	429 rate_limit or lock_timeout                Retryable   RetryAfter from Retry-After
//	type idempotency_error (400)                  Mismatch    mark failed, report a mismatch
//	5xx, Idempotent-Replayed: true                Reconcile   park: Stripe replays this failure
//	5xx, Stripe-Should-Retry: false               Reconcile   park: Stripe says it will not change
//	other 5xx                                     Retryable   release; a retry may replay it (above)
//	card_error, invalid_request_error, other 4xx  Permanent   mark failed
//
// Stripe saves the first response to a keyed request that started
// executing, a 500 included, and replays it for 24 hours: a replayed 5xx
// will never succeed under that key, and the object may or may not exist,
// so the record is parked for an operator instead of retried.
//
// # Replays and the dedup window
//
// A successful response that Stripe replayed (a takeover after a worker
// crashed between the call and the record, or a retry after a response was
// lost) is a success like any other: the result carries Replayed: true, and
// the ledger records the object the first request created. The effects set
// Expired to idempotency.ExpiredRetry and DedupWindow to 24 hours: a claim
// abandoned within the window is taken over and Stripe replays the first
// result; past it Stripe has forgotten the key, so the record is reported
// as needing reconciliation and Stripe is not called. Deactivation is safe
// to repeat and has no window.
//
// Each effect's fingerprint is the JSON of the request its build function
// returns, so a key reused with another payload stops at the executor with
// a *idempotency.MismatchError before Stripe would refuse it with an
// idempotency_error.
//
// # Finding an object
//
// When an attempt's outcome is unknown (a lost response, a worker that died
// after calling, a replayed 500, a key past Stripe's 24 hour memory), asking
// Stripe whether the object exists settles it without calling again.
// FindPromotionCode, FindRefund and FindCredit take the request value of
// the matching create adapter, list its scope (the coupon's codes for the
// customer, the payment intent's refunds, the customer's balance
// transactions) with stripe-go's auto-paging iterator, newest first in
// pages of 100, and match the key stored under MetadataKey. They send no
// creating request. A found object comes back as the create adapter's
// result, so the ledger records it as it would a created one; no object is
// false with a nil error; a page that could not be read is an error, and
// then nothing is known. Lists see every write at once; the Search API,
// which lags behind writes and covers neither promotion codes nor refunds,
// is not used.
//
// The key is matched exactly: pass the business key the metadata holds,
// not an Idempotency-Key derived from it. An object made without MetadataKey
// (by other code, or with its metadata edited since) is not found. A lookup
// stops at the first match, so it does not report a second object under the
// same key (possible only when the key was reused after Stripe forgot it);
// when no object matches it reads the whole scope, one list call per 100
// objects.
//
// # Testing
//
// Package stripefake is an in-process fake Stripe with Stripe's idempotency
// rules (replays, 409 in flight, idempotency_error, the 24 hour window) and
// fault injection; point NewAPI at it with APIConfig.URL. The package's own
// tests also check every request shape against stripe-mock when
// STRIPE_MOCK_URL is set.
package stripeeffect
