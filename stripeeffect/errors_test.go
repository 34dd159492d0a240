package stripeeffect_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
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
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	cases := []struct {
		name  string
		err   error
		class idempotency.Class
		after time.Duration // exact, or at least a minute for the HTTP date
	}{
		{"TransportErrorNotSentIsNotActed", fmt.Errorf("%w: %w", stripeeffect.ErrNotSent, dial), idempotency.ClassNotActed, 0},
		{"BareTransportErrorIsUnknown", dial, idempotency.ClassUnknown, 0},
		{"TimeoutIsUnknown", fmt.Errorf("post: %w", context.DeadlineExceeded), idempotency.ClassUnknown, 0},
		{"CancelledContextAloneIsUnknown", context.Canceled, idempotency.ClassUnknown, 0},
		{"UnreadableBodyIsUnknown", errors.New("Couldn't deserialize JSON (response status: 200)"), idempotency.ClassUnknown, 0},
		{"KeyInUseIsNotActed", stripeErr(409, stripe.ErrorTypeIdempotency, stripe.ErrorCodeIdempotencyKeyInUse, "Stripe-Should-Retry", "true"), idempotency.ClassNotActed, 0},
		{"AnyConflictIsNotActed", stripeErr(409, stripe.ErrorTypeInvalidRequest, ""), idempotency.ClassNotActed, 0},
		{"KeyInUseCodeWithoutStatusIsNotActed", stripeErr(0, stripe.ErrorTypeIdempotency, stripe.ErrorCodeIdempotencyKeyInUse), idempotency.ClassNotActed, 0},
		{"RateLimitIsNotActedWithRetryAfter", stripeErr(429, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeRateLimit, "Retry-After", "7"), idempotency.ClassNotActed, 7 * time.Second},
		{"RateLimitWithHTTPDate", stripeErr(429, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeRateLimit, "Retry-After", httpDate), idempotency.ClassNotActed, time.Minute},
		{"LockTimeoutIsNotActed", stripeErr(429, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeLockTimeout, "Stripe-Should-Retry", "true"), idempotency.ClassNotActed, 0},
		{"UnauthorizedIsNotActed", stripeErr(401, stripe.ErrorTypeInvalidRequest, "", "Stripe-Should-Retry", "false"), idempotency.ClassNotActed, 0},
		{"IdempotencyErrorIsMismatch", stripeErr(400, stripe.ErrorTypeIdempotency, "", "Stripe-Should-Retry", "false"), idempotency.ClassMismatch, 0},
		{"Fresh500IsUnknown", stripeErr(500, stripe.ErrorTypeAPI, ""), idempotency.ClassUnknown, 0},
		{"Fresh500StripeSaysRetryIsUnknown", stripeErr(500, stripe.ErrorTypeAPI, "", "Stripe-Should-Retry", "true"), idempotency.ClassUnknown, 0},
		{"Fresh503IsUnknownWithRetryAfter", stripeErr(503, stripe.ErrorTypeAPI, "", "Retry-After", "2"), idempotency.ClassUnknown, 2 * time.Second},
		{"APIErrorWithoutStatusIsUnknown", stripeErr(0, stripe.ErrorTypeAPI, ""), idempotency.ClassUnknown, 0},
		{"Replayed500IsReconcile", stripeErr(500, stripe.ErrorTypeAPI, "", "Idempotent-Replayed", "true", "Stripe-Should-Retry", "false"), idempotency.ClassReconcile, 0},
		{"Replayed502WithoutShouldRetryIsReconcile", stripeErr(502, stripe.ErrorTypeAPI, "", "Idempotent-Replayed", "true"), idempotency.ClassReconcile, 0},
		{"Fresh500StripeSaysDoNotRetryIsReconcile", stripeErr(500, stripe.ErrorTypeAPI, "", "Stripe-Should-Retry", "false"), idempotency.ClassReconcile, 0},
		{"CardErrorIsPermanent", stripeErr(402, stripe.ErrorTypeCard, stripe.ErrorCodeCardDeclined), idempotency.ClassPermanent, 0},
		{"ReplayedCardErrorIsPermanent", stripeErr(402, stripe.ErrorTypeCard, stripe.ErrorCodeCardDeclined, "Idempotent-Replayed", "true"), idempotency.ClassPermanent, 0},
		{"InvalidRequestIsPermanent", stripeErr(400, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeResourceMissing, "Stripe-Should-Retry", "false"), idempotency.ClassPermanent, 0},
		{"AmountTooLargeIsPermanent", stripeErr(400, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeAmountTooLarge), idempotency.ClassPermanent, 0},
		{"ForbiddenIsPermanent", stripeErr(403, stripe.ErrorTypeInvalidRequest, ""), idempotency.ClassPermanent, 0},
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

// rawServer accepts TCP connections on loopback and hands each to serve,
// with a context that ends with the test. It returns the address.
func rawServer(t *testing.T, serve func(ctx context.Context, c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(ctx, c)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// readRequest reads one HTTP request from c, its body too when body is
// set, and reports it on got.
func readRequest(t *testing.T, c net.Conn, body bool, got chan<- *http.Request) {
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		t.Errorf("server: read request: %v", err)
		return
	}
	if body {
		if _, err := io.ReadAll(req.Body); err != nil {
			t.Errorf("server: read body: %v", err)
			return
		}
	}
	got <- req
}

// A transport error is NotActed only when the request never reached the
// connection; once it was written, Stripe may have acted and it is Unknown.
// Each case sends a real request with stripe-go to a server that breaks the
// connection at one point.
func TestTransportErrorsAreClassifiedByWhetherTheRequestWasWritten(t *testing.T) {
	t.Parallel()
	key := mockKeys.MustKey(idempotency.Str("op", "transport"))
	req := stripeeffect.PromotionCode{Coupon: "co_1", Customer: "cus_1"}
	create := func(ctx context.Context, url string) error {
		api := stripeeffect.NewAPI("sk_test_transport", &stripeeffect.APIConfig{URL: url})
		pc, err := stripeeffect.CreatePromotionCode(ctx, api, key, req)
		require.Nil(t, pc)
		require.Error(t, err)
		return err
	}
	requireClass := func(t *testing.T, err error, want idempotency.Class) {
		t.Helper()
		class, after := idempotency.Classify(err)
		require.Equal(t, want, class, "%v", err)
		require.Zero(t, after)
		require.Equal(t, want == idempotency.ClassNotActed, errors.Is(err, stripeeffect.ErrNotSent), "%v", err)
		var se *stripe.Error
		require.False(t, errors.As(err, &se), "no answer came back")
	}

	t.Run("ConnectionRefusedIsNotActed", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close())
		requireClass(t, create(context.Background(), "http://"+addr), idempotency.ClassNotActed)
	})

	t.Run("ServerClosingBeforeTheRequestIsWrittenIsNotActed", func(t *testing.T) {
		t.Parallel()
		// The client speaks TLS: the server closes the connection during
		// the handshake, before a byte of the request can be written.
		accepted := make(chan struct{}, 1)
		addr := rawServer(t, func(context.Context, net.Conn) { accepted <- struct{}{} })
		requireClass(t, create(context.Background(), "https://"+addr), idempotency.ClassNotActed)
		require.Len(t, accepted, 1, "the connection was made, the request was not written")
	})

	t.Run("ContextDoneBeforeSendingIsNotActed", func(t *testing.T) {
		t.Parallel()
		accepted := make(chan struct{}, 1)
		addr := rawServer(t, func(context.Context, net.Conn) { accepted <- struct{}{} })
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := create(ctx, "http://"+addr)
		requireClass(t, err, idempotency.ClassNotActed)
		require.ErrorIs(t, err, context.Canceled)
		require.Empty(t, accepted)
	})

	t.Run("ServerClosingAfterReadingTheBodyIsUnknown", func(t *testing.T) {
		t.Parallel()
		got := make(chan *http.Request, 1)
		addr := rawServer(t, func(_ context.Context, c net.Conn) { readRequest(t, c, true, got) })
		requireClass(t, create(context.Background(), "http://"+addr), idempotency.ClassUnknown)
		r := <-got
		require.Equal(t, key.String(), r.Header.Get("Idempotency-Key"), "the whole request reached the server")
	})

	t.Run("ServerClosingBeforeReadingTheBodyIsUnknownOrNotSent", func(t *testing.T) {
		t.Parallel()
		// The server reads the headers and closes. Whether the client had
		// handed the whole request to the connection by then is a race
		// between two processes: if it had, for all it can tell the server
		// may have read it (Unknown, the safe side); if its write failed,
		// the request was not sent (NotActed, ErrNotSent). Either way the
		// class must agree with what the client knows, and never be a
		// success.
		got := make(chan *http.Request, 1)
		addr := rawServer(t, func(_ context.Context, c net.Conn) { readRequest(t, c, false, got) })
		err := create(context.Background(), "http://"+addr)
		want := idempotency.ClassUnknown
		if errors.Is(err, stripeeffect.ErrNotSent) {
			want = idempotency.ClassNotActed
		}
		requireClass(t, err, want)
		require.Len(t, got, 1)
	})

	t.Run("ContextDoneAfterTheRequestWasWrittenIsUnknown", func(t *testing.T) {
		t.Parallel()
		got := make(chan *http.Request, 1)
		addr := rawServer(t, func(ctx context.Context, c net.Conn) {
			readRequest(t, c, true, got)
			<-ctx.Done() // never answer
		})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := make(chan error, 1)
		go func() {
			api := stripeeffect.NewAPI("sk_test_transport", &stripeeffect.APIConfig{URL: "http://" + addr})
			_, err := stripeeffect.CreatePromotionCode(ctx, api, key, req)
			errc <- err
		}()
		<-got // the server has the whole request
		cancel()
		err := <-errc
		require.ErrorIs(t, err, context.Canceled)
		requireClass(t, err, idempotency.ClassUnknown)
	})
}

func TestClassifyMatchesOutcomeSentinels(t *testing.T) {
	t.Parallel()
	require.NoError(t, stripeeffect.Classify(nil))
	require.ErrorIs(t, stripeeffect.Classify(errors.New("eof")), idempotency.ErrRetryable)
	require.ErrorIs(t, stripeeffect.Classify(stripeErr(429, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeRateLimit)), idempotency.ErrRetryable)
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
