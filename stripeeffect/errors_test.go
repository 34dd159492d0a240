package stripeeffect_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/stripeeffect"
)

// stripeErr builds a *stripe.Error as stripe-go returns it for an error
// response: status, type, code and the response headers.
func stripeErr(status int, typ stripe.ErrorType, code stripe.ErrorCode, header ...string) *stripe.Error {
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	e := &stripe.Error{HTTPStatusCode: status, Type: typ, Code: code, Msg: "test"}
	e.SetLastResponse(&stripe.APIResponse{Header: h, StatusCode: status})
	return e
}

func TestClassify(t *testing.T) {
	t.Parallel()
	httpDate := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	cases := []struct {
		name  string
		err   error
		class idempotency.Class
		after time.Duration // exact, or at least a minute for the HTTP date
	}{
		{"NetworkErrorIsRetryable", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, idempotency.ClassRetryable, 0},
		{"TimeoutIsRetryable", fmt.Errorf("post: %w", context.DeadlineExceeded), idempotency.ClassRetryable, 0},
		{"CancelledContextIsRetryable", context.Canceled, idempotency.ClassRetryable, 0},
		{"KeyInUseIsRetryable", stripeErr(409, stripe.ErrorTypeIdempotency, stripe.ErrorCodeIdempotencyKeyInUse, "Stripe-Should-Retry", "true"), idempotency.ClassRetryable, 0},
		{"AnyConflictIsRetryable", stripeErr(409, stripe.ErrorTypeInvalidRequest, ""), idempotency.ClassRetryable, 0},
		{"KeyInUseCodeWithoutStatusIsRetryable", stripeErr(0, stripe.ErrorTypeIdempotency, stripe.ErrorCodeIdempotencyKeyInUse), idempotency.ClassRetryable, 0},
		{"RateLimitIsRetryableAfterRetryAfter", stripeErr(429, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeRateLimit, "Retry-After", "7"), idempotency.ClassRetryable, 7 * time.Second},
		{"RateLimitWithHTTPDate", stripeErr(429, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeRateLimit, "Retry-After", httpDate), idempotency.ClassRetryable, time.Minute},
		{"LockTimeoutIsRetryable", stripeErr(429, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeLockTimeout, "Stripe-Should-Retry", "true"), idempotency.ClassRetryable, 0},
		{"IdempotencyErrorIsMismatch", stripeErr(400, stripe.ErrorTypeIdempotency, "", "Stripe-Should-Retry", "false"), idempotency.ClassMismatch, 0},
		{"Fresh500IsRetryable", stripeErr(500, stripe.ErrorTypeAPI, ""), idempotency.ClassRetryable, 0},
		{"Fresh503IsRetryable", stripeErr(503, stripe.ErrorTypeAPI, "", "Retry-After", "2"), idempotency.ClassRetryable, 2 * time.Second},
		{"Replayed500NeedsReconciliation", stripeErr(500, stripe.ErrorTypeAPI, "", "Idempotent-Replayed", "true", "Stripe-Should-Retry", "false"), idempotency.ClassReconcile, 0},
		{"Replayed500WithoutShouldRetryNeedsReconciliation", stripeErr(502, stripe.ErrorTypeAPI, "", "Idempotent-Replayed", "true"), idempotency.ClassReconcile, 0},
		{"Server500StripeSaysDoNotRetryNeedsReconciliation", stripeErr(500, stripe.ErrorTypeAPI, "", "Stripe-Should-Retry", "false"), idempotency.ClassReconcile, 0},
		{"APIErrorWithoutStatusIsRetryable", stripeErr(0, stripe.ErrorTypeAPI, ""), idempotency.ClassRetryable, 0},
		{"CardErrorIsPermanent", stripeErr(402, stripe.ErrorTypeCard, stripe.ErrorCodeCardDeclined), idempotency.ClassPermanent, 0},
		{"ReplayedCardErrorIsPermanent", stripeErr(402, stripe.ErrorTypeCard, stripe.ErrorCodeCardDeclined, "Idempotent-Replayed", "true"), idempotency.ClassPermanent, 0},
		{"InvalidRequestIsPermanent", stripeErr(400, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeResourceMissing, "Stripe-Should-Retry", "false"), idempotency.ClassPermanent, 0},
		{"AmountTooLargeIsPermanent", stripeErr(400, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeAmountTooLarge), idempotency.ClassPermanent, 0},
		{"AuthenticationIsPermanent", stripeErr(401, stripe.ErrorTypeInvalidRequest, ""), idempotency.ClassPermanent, 0},
		{"NotFoundIsPermanent", stripeErr(404, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeResourceMissing), idempotency.ClassPermanent, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			wrapped := fmt.Errorf("stripeeffect: create promotion code: %w", tc.err)
			got := stripeeffect.Classify(wrapped)
			class, after := idempotency.Classify(got)
			require.Equal(t, tc.class, class, "class of %v", tc.err)
			if tc.after >= time.Minute {
				require.Greater(t, after, tc.after)
			} else {
				require.Equal(t, tc.after, after)
			}
			// The cause stays reachable.
			require.ErrorIs(t, got, tc.err)
			var se *stripe.Error
			if errors.As(tc.err, &se) {
				require.ErrorAs(t, got, &se)
			}
		})
	}
}

func TestClassifyMatchesOutcomeSentinels(t *testing.T) {
	t.Parallel()
	require.NoError(t, stripeeffect.Classify(nil))
	require.ErrorIs(t, stripeeffect.Classify(errors.New("eof")), idempotency.ErrRetryable)
	require.ErrorIs(t, stripeeffect.Classify(stripeErr(402, stripe.ErrorTypeCard, "")), idempotency.ErrPermanent)
	require.ErrorIs(t, stripeeffect.Classify(stripeErr(400, stripe.ErrorTypeIdempotency, "")), idempotency.ErrFingerprintMismatch)
	require.ErrorIs(t, stripeeffect.Classify(stripeErr(500, stripe.ErrorTypeAPI, "", "Idempotent-Replayed", "true")), idempotency.ErrNeedsReconciliation)
}

func TestClassifyLeavesClassifiedErrorsAlone(t *testing.T) {
	t.Parallel()
	perm := idempotency.Permanent(errors.New("refused"))
	require.Same(t, perm, stripeeffect.Classify(perm))
	wrapped := fmt.Errorf("ctx: %w", idempotency.Reconcile(errors.New("unknown")))
	require.Equal(t, wrapped, stripeeffect.Classify(wrapped))
}

func TestReplayed(t *testing.T) {
	t.Parallel()
	require.False(t, stripeeffect.Replayed(nil))
	require.False(t, stripeeffect.Replayed(&stripe.APIResponse{Header: http.Header{}}))
	require.True(t, stripeeffect.Replayed(&stripe.APIResponse{Header: http.Header{"Idempotent-Replayed": {"true"}}}))
}
