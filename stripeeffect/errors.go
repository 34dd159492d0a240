package stripeeffect

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/idempotency"
)

var (
	// ErrNoKey is returned, classified permanent, for a call with the zero
	// key. Nothing was sent: stripe-go would have invented a random key,
	// which protects only its own retries of that one call.
	ErrNoKey = errors.New("stripeeffect: no idempotency key; request not sent")
	// ErrInvalidRequest is returned, classified permanent, for a request
	// the adapter refuses before sending it (a missing coupon, customer or
	// currency, a non-positive amount, a nil client).
	ErrInvalidRequest = errors.New("stripeeffect: invalid request")
)

// Response headers Stripe sets that the classification reads.
const (
	headerReplayed    = "Idempotent-Replayed"
	headerShouldRetry = "Stripe-Should-Retry"
	headerRetryAfter  = "Retry-After"
)

// Classify wraps an error returned by stripe-go in the idempotency class that
// tells the executor what to do with the claim. It returns nil for nil and
// leaves an already classified error (an *idempotency.ProviderError) as it
// is. The original error stays reachable with errors.As (*stripe.Error) and
// errors.Is.
//
//	error                                         class       why
//	-------------------------------------------   ---------   ---------------------------------------------
//	not a *stripe.Error (network, timeout,        Retryable   nothing durable is known; the same key
//	  cancelled context, unreadable body)                     replays the first result if Stripe acted
//	409, or code idempotency_key_in_use           Retryable   a request with this key is in flight:
//	                                                          back off, retry with the same key
//	429 (rate_limit, lock_timeout)                Retryable   with Retry-After when given; not saved
//	type idempotency_error (400)                  Mismatch    the key was used with other parameters
//	5xx with Idempotent-Replayed: true            Reconcile   Stripe saved a failure under this key and
//	                                                          will replay it until the key expires
//	5xx with Stripe-Should-Retry: false           Reconcile   Stripe says the answer will not change
//	other 5xx                                     Retryable   with Retry-After when given
//	card_error (402), invalid_request_error,      Permanent   the request itself is refused (declined,
//	  any other 4xx                                           unknown coupon, amount too large, auth)
//
// A replayed failure is never retryable: retrying under the same key gets
// the same answer for 24 hours, and under a new key could act twice.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	var pe *idempotency.ProviderError
	if errors.As(err, &pe) {
		return err
	}
	var se *stripe.Error
	if !errors.As(err, &se) {
		// A network error, a timeout or a cancelled context: the request
		// may or may not have reached Stripe. The same key makes the retry
		// safe within DedupWindow.
		return idempotency.Retryable(err, 0)
	}
	var header http.Header
	if se.LastResponse != nil {
		header = se.LastResponse.Header
	}
	status := se.HTTPStatusCode
	if status == 0 && se.LastResponse != nil {
		status = se.LastResponse.StatusCode
	}
	after := retryAfter(header.Get(headerRetryAfter), time.Now())
	switch {
	case status == http.StatusConflict || se.Code == stripe.ErrorCodeIdempotencyKeyInUse:
		return idempotency.Retryable(err, after)
	case se.Type == stripe.ErrorTypeIdempotency:
		return idempotency.Mismatch(err)
	case status == http.StatusTooManyRequests:
		return idempotency.Retryable(err, after)
	case status >= 500 || (status == 0 && se.Type == stripe.ErrorTypeAPI):
		if isReplayed(header) || strings.EqualFold(header.Get(headerShouldRetry), "false") {
			return idempotency.Reconcile(err)
		}
		return idempotency.Retryable(err, after)
	default:
		return idempotency.Permanent(err)
	}
}

// Replayed reports whether a response is Stripe's replay of the saved
// response to an earlier request with the same idempotency key (the header
// Idempotent-Replayed: true). Pass the LastResponse of a returned object or
// of a *stripe.Error. A replayed success means the object was created (or
// updated) by the earlier request, not by this one.
func Replayed(resp *stripe.APIResponse) bool {
	return resp != nil && isReplayed(resp.Header)
}

func isReplayed(h http.Header) bool {
	return strings.EqualFold(strings.TrimSpace(h.Get(headerReplayed)), "true")
}

// retryAfter parses a Retry-After value: delay-seconds or an HTTP date.
// Invalid or past values mean no delay.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(1<<62)/int64(time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
