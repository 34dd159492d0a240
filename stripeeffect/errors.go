package stripeeffect

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
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
	// ErrNotSent is wrapped, classified not acted, around a transport
	// error (a refused connection, a failed TLS handshake, a context done
	// before the request went out) that the adapters saw before the
	// request was handed to the connection: Stripe cannot have acted.
	ErrNotSent = errors.New("stripeeffect: request not sent")
)

// Response headers Stripe sets that the classification reads.
const (
	headerReplayed    = "Idempotent-Replayed"
	headerShouldRetry = "Stripe-Should-Retry"
	headerRetryAfter  = "Retry-After"
)

// Classify wraps an error returned by stripe-go in the idempotency class that
// says what Stripe may have done, from which the executor decides what to do
// with the claim. It returns nil for nil and leaves an already classified
// error (an *idempotency.ProviderError) as it is. The original error stays
// reachable with errors.As (*stripe.Error) and errors.Is.
//
// Stripe saves the response to a keyed request once the endpoint began
// executing, a 5xx included, and replays it to every request with the same
// key for at least 24 hours. It saves nothing for a request it refuses
// before executing: a validation error, a 401, a 409 (the key is in use by
// a request still executing) or a 429.
//
//	answer                                  class       why
//	-------------------------------------   ---------   ----------------------------------------------
//	transport error before the request      NotActed    nothing reached Stripe (a refused connection,
//	  was written (ErrNotSent)                          a failed TLS handshake, a context done first)
//	transport error after it was written,   Unknown     Stripe may have acted; the same key replays
//	  or a transport error alone                        what it did (a timeout, a lost response, a
//	                                                    context done while waiting)
//	409, or code idempotency_key_in_use     NotActed    another request with this key is executing;
//	                                                    this one was refused: back off, same key
//	429 (rate_limit, lock_timeout)          NotActed    refused before executing; Retry-After kept
//	401                                     NotActed    refused before executing (an API key to fix);
//	                                                    the same request may succeed later
//	type idempotency_error (400)            Mismatch    the key was used with other parameters
//	5xx, Idempotent-Replayed: true          Reconcile   a saved failure: the same key replays it for
//	                                                    ever; only a lookup tells whether the object
//	                                                    exists
//	5xx, Stripe-Should-Retry: false         Reconcile   Stripe saved this failure (it began executing):
//	                                                    a retry under the key would replay it
//	other 5xx (api_error)                   Unknown     Stripe may have acted; Retry-After kept
//	400 invalid_request_error               Permanent   refused before executing, nothing saved, so
//	                                                    nothing happened and the key is free; but the
//	                                                    same request would be refused again
//	402 card_error (replayed or not)        Permanent   the endpoint ran and refused: nothing was
//	                                                    created, and the refusal is saved under the key
//	any other 4xx (403, 404, ...)           Permanent   the request itself is refused
//
// Classify sees only the error: a transport error it is given bare, without
// ErrNotSent, may have followed a written request (net/http resends a keyed
// POST on a fresh connection when a reused one fails), so it is Unknown. The
// adapters of this package trace each request (httptrace WroteRequest) and
// wrap ErrNotSent around the transport errors of requests that were not
// written. "Written" means handed in full to the connection: a request that
// then failed to leave the machine is still Unknown, the safe side.
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
		if errors.Is(err, ErrNotSent) {
			return idempotency.NotActed(err, 0)
		}
		// A timeout, a lost response, a body that could not be read: the
		// request may have reached Stripe. The same key makes a retry
		// safe while Stripe remembers it.
		return idempotency.Unknown(err, 0)
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
		return idempotency.NotActed(err, after)
	case se.Type == stripe.ErrorTypeIdempotency:
		return idempotency.Mismatch(err)
	case status == http.StatusTooManyRequests, status == http.StatusUnauthorized:
		return idempotency.NotActed(err, after)
	case status >= 500 || (status == 0 && se.Type == stripe.ErrorTypeAPI):
		if isReplayed(header) || strings.EqualFold(strings.TrimSpace(header.Get(headerShouldRetry)), "false") {
			return idempotency.Reconcile(err)
		}
		return idempotency.Unknown(err, after)
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

// sendTrace learns whether a request was handed in full to a connection.
type sendTrace struct{ wrote atomic.Bool }

// bind returns ctx with the trace installed (after any trace ctx already
// carries).
func (t *sendTrace) bind(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			// Called once per request written, stripe-go's and net/http's
			// own retries included: one written request is enough for
			// Stripe to have acted.
			if info.Err == nil {
				t.wrote.Store(true)
			}
		},
	})
}

// notSentError marks a transport error met before the request was written.
type notSentError struct{ err error }

func (e *notSentError) Error() string   { return "request not sent: " + e.err.Error() }
func (e *notSentError) Unwrap() []error { return []error{ErrNotSent, e.err} }

// answered reports Stripe's answer to the attempt running under ctx
// (idempotency.Observe: status, Request-Id, replay) and returns err, wrapped
// with what and classified. resp is the returned object's LastResponse (set
// by stripe-go even when a 2xx body could not be decoded); for a
// *stripe.Error its own LastResponse is used. Nothing is observed when no
// answer came back.
func (t *sendTrace) answered(ctx context.Context, resp *stripe.APIResponse, err error, what string) error {
	var se *stripe.Error
	if errors.As(err, &se) && se.LastResponse != nil {
		resp = se.LastResponse
	}
	if resp != nil {
		idempotency.Observe(ctx, idempotency.Observation{
			Status:    resp.StatusCode,
			RequestID: resp.RequestID,
			Replayed:  isReplayed(resp.Header),
		})
	}
	if err == nil {
		return nil
	}
	if se == nil && !t.wrote.Load() {
		err = &notSentError{err}
	}
	return Classify(fmt.Errorf("stripeeffect: %s: %w", what, err))
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
