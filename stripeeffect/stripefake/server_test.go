package stripefake_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

const apiKey = "sk_test_x"

func newServer(t *testing.T) (*stripefake.Server, *client.API) {
	t.Helper()
	srv := stripefake.New()
	t.Cleanup(srv.Close)
	srv.AddCoupon("SPRING", 25)
	return srv, srv.Client(apiKey)
}

func promoParams(key string) *stripe.PromotionCodeParams {
	p := &stripe.PromotionCodeParams{
		Coupon:         stripe.String("SPRING"),
		Customer:       stripe.String("cus_123"),
		MaxRedemptions: stripe.Int64(1),
	}
	p.AddMetadata("effect", "e-1")
	if key != "" {
		p.SetIdempotencyKey(key)
	}
	return p
}

func stripeErr(t *testing.T, err error) *stripe.Error {
	t.Helper()
	require.Error(t, err)
	var se *stripe.Error
	require.True(t, errors.As(err, &se), "want *stripe.Error, got %T: %v", err, err)
	return se
}

func TestPromotionCodeSameKeyReplays(t *testing.T) {
	srv, sc := newServer(t)

	first, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Equal(t, "promo_000001", first.ID)
	require.True(t, first.Active)
	require.Equal(t, "SPRING", first.Coupon.ID)
	require.Equal(t, 25.0, first.Coupon.PercentOff)
	require.Equal(t, "cus_123", first.Customer.ID)
	require.Equal(t, int64(1), first.MaxRedemptions)
	require.Equal(t, "e-1", first.Metadata["effect"])
	require.NotEmpty(t, first.Code)
	require.Empty(t, first.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, "k1", first.LastResponse.IdempotencyKey)
	require.NotEmpty(t, first.LastResponse.RequestID)

	second, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Equal(t, first.ID, second.ID)
	require.Equal(t, first.Code, second.Code)
	require.Equal(t, "true", second.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, first.LastResponse.RequestID, second.LastResponse.Header.Get("Original-Request"))
	require.NotEqual(t, first.LastResponse.RequestID, second.LastResponse.RequestID)

	require.Equal(t, 1, srv.Created(stripefake.KindPromotionCode))
	require.Equal(t, 1, srv.CreatedObjects())
	objs := srv.Objects()
	require.Len(t, objs, 1)
	require.Equal(t, "k1", objs[0].IdempotencyKey)
	require.Equal(t, first.ID, objs[0].ID)

	recs := srv.Requests("k1")
	require.Len(t, recs, 2)
	require.False(t, recs[0].Replayed)
	require.True(t, recs[0].Executed)
	require.True(t, recs[1].Replayed)
	require.False(t, recs[1].Executed)
	require.Equal(t, http.StatusOK, recs[1].Status)
	require.Equal(t, "/v1/promotion_codes", recs[1].Path)
	require.Equal(t, first.ID, recs[1].ObjectID)
	require.Equal(t, 0, srv.RequestsWithoutKey())
	require.Equal(t, 0, srv.RequestsWithGeneratedKey())
}

func TestSameKeyOtherParamsIsIdempotencyError(t *testing.T) {
	srv, sc := newServer(t)
	_, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)

	other := promoParams("k1")
	other.MaxRedemptions = stripe.Int64(2)
	_, err = sc.PromotionCodes.New(other)
	se := stripeErr(t, err)
	require.Equal(t, stripe.ErrorTypeIdempotency, se.Type)
	require.Equal(t, http.StatusBadRequest, se.HTTPStatusCode)
	require.Contains(t, se.Msg, "same parameters")
	require.Equal(t, "false", se.LastResponse.Header.Get("Stripe-Should-Retry"))
	var idem *stripe.IdempotencyError
	require.True(t, errors.As(se.Err, &idem))

	// The same key on another endpoint is also rejected.
	pu := &stripe.PromotionCodeParams{Active: stripe.Bool(false)}
	pu.SetIdempotencyKey("k1")
	_, err = sc.PromotionCodes.Update("promo_000001", pu)
	require.Equal(t, stripe.ErrorTypeIdempotency, stripeErr(t, err).Type)

	// The error was not saved: the original parameters still replay.
	again, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Equal(t, "true", again.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, srv.Created(stripefake.KindPromotionCode))
}

func TestConcurrentSameKeyGets409(t *testing.T) {
	srv, sc := newServer(t)
	release := make(chan struct{})
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultDelay, Path: "/v1/promotion_codes", Release: release})

	var wg sync.WaitGroup
	var first *stripe.PromotionCode
	var firstErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		first, firstErr = sc.PromotionCodes.New(promoParams("k1"))
	}()
	require.Eventually(t, func() bool { return srv.InFlight() == 1 }, 5*time.Second, time.Millisecond)

	_, err := sc.PromotionCodes.New(promoParams("k1"))
	se := stripeErr(t, err)
	require.Equal(t, http.StatusConflict, se.HTTPStatusCode)
	require.Equal(t, stripe.ErrorTypeIdempotency, se.Type)
	require.Equal(t, stripe.ErrorCodeIdempotencyKeyInUse, se.Code)
	require.Equal(t, "true", se.LastResponse.Header.Get("Stripe-Should-Retry"))

	close(release)
	wg.Wait()
	require.NoError(t, firstErr)

	third, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Equal(t, first.ID, third.ID)
	require.Equal(t, "true", third.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, srv.Created(stripefake.KindPromotionCode))
	require.Equal(t, 0, srv.InFlight())

	recs := srv.Requests("k1")
	require.Len(t, recs, 3)
	statuses := map[int]int{}
	for _, r := range recs {
		statuses[r.Status]++
	}
	require.Equal(t, map[int]int{200: 2, 409: 1}, statuses)
}

func TestResponseLostThenRetryReplays(t *testing.T) {
	srv, sc := newServer(t)
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/promotion_codes"})

	_, err := sc.PromotionCodes.New(promoParams("k1"))
	require.Error(t, err)
	var se *stripe.Error
	require.False(t, errors.As(err, &se), "a lost response is a network error, got %v", err)
	var ue *url.Error
	require.True(t, errors.As(err, &ue), "got %T", err)
	require.Equal(t, 1, srv.Created(stripefake.KindPromotionCode))

	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Equal(t, srv.Objects()[0].ID, pc.ID)
	require.Equal(t, "true", pc.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, srv.Created(stripefake.KindPromotionCode))

	recs := srv.Requests("k1")
	require.Len(t, recs, 2)
	require.Equal(t, stripefake.FaultResponseLost, recs[0].Fault)
	require.Equal(t, 0, recs[0].Status)
	require.True(t, recs[0].Executed)
	require.True(t, recs[1].Replayed)
}

func TestResponseLostIsRetriedByStripeGo(t *testing.T) {
	srv, _ := newServer(t)
	cfg := srv.BackendConfig()
	cfg.MaxNetworkRetries = stripe.Int64(1)
	sc := client.New(apiKey, stripe.NewBackendsWithConfig(cfg))
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost})

	// No key set: stripe-go generates one and reuses it for its own retry.
	pc, err := sc.PromotionCodes.New(promoParams(""))
	require.NoError(t, err)
	require.Equal(t, "true", pc.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, srv.Created(stripefake.KindPromotionCode))
	require.Equal(t, 2, srv.RequestsWithGeneratedKey())
	require.Equal(t, 0, srv.RequestsWithoutKey())
}

// Measured: Go's net/http transport itself resends a POST carrying an
// Idempotency-Key when a reused keep-alive connection is closed before any
// response byte, even with stripe-go's retries off.
func TestConnectionClosedOnReusedConnectionIsResentByNetHTTP(t *testing.T) {
	srv, sc := newServer(t)
	_, err := sc.PromotionCodes.New(promoParams("warm-up")) // leaves an idle connection
	require.NoError(t, err)

	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultConnectionClosed})
	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Equal(t, "true", pc.LastResponse.Header.Get("Idempotent-Replayed"))
	recs := srv.Requests("k1")
	require.Len(t, recs, 2)
	require.Equal(t, stripefake.FaultConnectionClosed, recs[0].Fault)
	require.True(t, recs[1].Replayed)
	require.Equal(t, 2, srv.Created(stripefake.KindPromotionCode))
}

func TestServerErrorAfterWriteIsSavedAndReplayed(t *testing.T) {
	srv, sc := newServer(t)
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorAfterWrite, Path: "/v1/promotion_codes"})

	_, err := sc.PromotionCodes.New(promoParams("k1"))
	se := stripeErr(t, err)
	require.Equal(t, http.StatusInternalServerError, se.HTTPStatusCode)
	require.Equal(t, stripe.ErrorTypeAPI, se.Type)
	require.Equal(t, "false", se.LastResponse.Header.Get("Stripe-Should-Retry"))
	require.Empty(t, se.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, srv.Created(stripefake.KindPromotionCode))

	_, err = sc.PromotionCodes.New(promoParams("k1"))
	se = stripeErr(t, err)
	require.Equal(t, http.StatusInternalServerError, se.HTTPStatusCode)
	require.Equal(t, "true", se.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, "false", se.LastResponse.Header.Get("Stripe-Should-Retry"))
	require.Equal(t, 1, srv.Created(stripefake.KindPromotionCode))
	require.Equal(t, 0, srv.PendingFaults())

	// A new key executes again: the caller now has two objects.
	_, err = sc.PromotionCodes.New(promoParams("k2"))
	require.NoError(t, err)
	require.Equal(t, 2, srv.Created(stripefake.KindPromotionCode))
}

func TestServerErrorBeforeWriteIsNotSaved(t *testing.T) {
	srv, sc := newServer(t)
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Status: 502})

	_, err := sc.PromotionCodes.New(promoParams("k1"))
	se := stripeErr(t, err)
	require.Equal(t, http.StatusBadGateway, se.HTTPStatusCode)
	require.Equal(t, 0, srv.CreatedObjects())

	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Empty(t, pc.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, srv.CreatedObjects())
}

func TestRateLimitIsNotSaved(t *testing.T) {
	srv, sc := newServer(t)
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, RetryAfter: 1500 * time.Millisecond, Times: 2})

	for range 2 {
		_, err := sc.PromotionCodes.New(promoParams("k1"))
		se := stripeErr(t, err)
		require.Equal(t, http.StatusTooManyRequests, se.HTTPStatusCode)
		require.Equal(t, stripe.ErrorCodeRateLimit, se.Code)
		require.Equal(t, "2", se.LastResponse.Header.Get("Retry-After"))
	}
	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Empty(t, pc.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, srv.CreatedObjects())
}

func TestLockTimeoutIsRetriedByStripeGo(t *testing.T) {
	srv, _ := newServer(t)
	cfg := srv.BackendConfig()
	cfg.MaxNetworkRetries = stripe.Int64(1)
	sc := client.New(apiKey, stripe.NewBackendsWithConfig(cfg))
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultLockTimeout})

	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Empty(t, pc.LastResponse.Header.Get("Idempotent-Replayed"))
	recs := srv.Requests("k1")
	require.Len(t, recs, 2)
	require.Equal(t, http.StatusTooManyRequests, recs[0].Status)
	require.Equal(t, "lock_timeout", recs[0].ErrorCode)
	require.True(t, recs[1].Executed)
}

func TestKeyExpiresAfter24Hours(t *testing.T) {
	srv, sc := newServer(t)
	first, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)

	srv.Advance(23 * time.Hour)
	again, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Equal(t, first.ID, again.ID)

	srv.Advance(2 * time.Hour)
	later, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.NotEqual(t, first.ID, later.ID)
	require.Empty(t, later.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 2, srv.Created(stripefake.KindPromotionCode))
	require.Equal(t, stripefake.DefaultNow.Add(25*time.Hour).Unix(), later.Created)
}

func TestValidationErrorsAreNotSaved(t *testing.T) {
	srv, sc := newServer(t)
	p := promoParams("k1")
	p.Coupon = stripe.String("SUMMER")
	_, err := sc.PromotionCodes.New(p)
	se := stripeErr(t, err)
	require.Equal(t, stripe.ErrorCodeResourceMissing, se.Code)
	require.Equal(t, http.StatusBadRequest, se.HTTPStatusCode)
	require.Equal(t, "coupon", se.Param)
	require.Equal(t, "false", se.LastResponse.Header.Get("Stripe-Should-Retry"))

	srv.AddCoupon("SUMMER", 10)
	pc, err := sc.PromotionCodes.New(p)
	require.NoError(t, err)
	require.Equal(t, "SUMMER", pc.Coupon.ID)

	missing := &stripe.PromotionCodeParams{Customer: stripe.String("cus_1")}
	missing.SetIdempotencyKey("k2")
	_, err = sc.PromotionCodes.New(missing)
	require.Equal(t, stripe.ErrorCodeParameterMissing, stripeErr(t, err).Code)

	dup := promoParams("k3")
	dup.Code = stripe.String(strings.ToLower(pc.Code))
	_, err = sc.PromotionCodes.New(dup)
	require.Equal(t, http.StatusBadRequest, stripeErr(t, err).HTTPStatusCode)
	require.Equal(t, 1, srv.CreatedObjects())
}

func TestPromotionCodeUpdateGetList(t *testing.T) {
	srv, sc := newServer(t)
	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	p2 := promoParams("k2")
	p2.Customer = stripe.String("cus_other")
	p2.Code = stripe.String("WELCOME")
	_, err = sc.PromotionCodes.New(p2)
	require.NoError(t, err)

	up := &stripe.PromotionCodeParams{Active: stripe.Bool(false)}
	up.AddMetadata("revoked", "yes")
	up.SetIdempotencyKey("k3")
	updated, err := sc.PromotionCodes.Update(pc.ID, up)
	require.NoError(t, err)
	require.False(t, updated.Active)
	require.Equal(t, map[string]string{"effect": "e-1", "revoked": "yes"}, updated.Metadata)

	got, err := sc.PromotionCodes.Get(pc.ID, nil)
	require.NoError(t, err)
	require.False(t, got.Active)

	unknown := &stripe.PromotionCodeParams{Active: stripe.Bool(false)}
	unknown.SetIdempotencyKey("k4")
	_, err = sc.PromotionCodes.Update("promo_nope", unknown)
	se := stripeErr(t, err)
	require.Equal(t, http.StatusNotFound, se.HTTPStatusCode)
	require.Equal(t, stripe.ErrorCodeResourceMissing, se.Code)

	lp := &stripe.PromotionCodeListParams{Customer: stripe.String("cus_123")}
	it := sc.PromotionCodes.List(lp)
	var ids []string
	for it.Next() {
		ids = append(ids, it.PromotionCode().ID)
	}
	require.NoError(t, it.Err())
	require.Equal(t, []string{pc.ID}, ids)

	lp = &stripe.PromotionCodeListParams{Active: stripe.Bool(true)}
	lp.Limit = stripe.Int64(1)
	it = sc.PromotionCodes.List(lp)
	ids = nil
	for it.Next() {
		ids = append(ids, it.PromotionCode().ID)
	}
	require.NoError(t, it.Err())
	require.Equal(t, []string{"promo_000002"}, ids)

	all := sc.PromotionCodes.List(&stripe.PromotionCodeListParams{ListParams: stripe.ListParams{Limit: stripe.Int64(1)}})
	n := 0
	for all.Next() {
		n++
	}
	require.NoError(t, all.Err())
	require.Equal(t, 2, n)
	require.Equal(t, 2, srv.Created(stripefake.KindPromotionCode))
}

func TestRefunds(t *testing.T) {
	srv, sc := newServer(t)
	srv.AddPaymentIntent("pi_1", 1000, "usd")

	p := &stripe.RefundParams{PaymentIntent: stripe.String("pi_1"), Amount: stripe.Int64(600)}
	p.AddMetadata("effect", "r-1")
	p.SetIdempotencyKey("r1")
	rf, err := sc.Refunds.New(p)
	require.NoError(t, err)
	require.Equal(t, "re_000001", rf.ID)
	require.Equal(t, int64(600), rf.Amount)
	require.Equal(t, stripe.RefundStatusSucceeded, rf.Status)
	require.Equal(t, stripe.CurrencyUSD, rf.Currency)
	require.Equal(t, "pi_1", rf.PaymentIntent.ID)

	again, err := sc.Refunds.New(p)
	require.NoError(t, err)
	require.Equal(t, rf.ID, again.ID)
	require.Equal(t, int64(600), srv.Refunded("pi_1"))

	tooMuch := &stripe.RefundParams{PaymentIntent: stripe.String("pi_1"), Amount: stripe.Int64(600)}
	tooMuch.SetIdempotencyKey("r2")
	_, err = sc.Refunds.New(tooMuch)
	se := stripeErr(t, err)
	require.Equal(t, http.StatusBadRequest, se.HTTPStatusCode)
	require.Equal(t, stripe.ErrorTypeInvalidRequest, se.Type)
	require.Equal(t, stripe.ErrorCodeAmountTooLarge, se.Code)

	// Not saved: the retry is evaluated again, not replayed.
	_, err = sc.Refunds.New(tooMuch)
	require.Equal(t, stripe.ErrorCodeAmountTooLarge, stripeErr(t, err).Code)
	recs := srv.Requests("r2")
	require.Len(t, recs, 2)
	require.False(t, recs[1].Replayed)
	require.False(t, recs[1].Executed)

	rest := &stripe.RefundParams{PaymentIntent: stripe.String("pi_1")}
	rest.SetIdempotencyKey("r3")
	rf3, err := sc.Refunds.New(rest)
	require.NoError(t, err)
	require.Equal(t, int64(400), rf3.Amount)
	require.Equal(t, int64(1000), srv.Refunded("pi_1"))

	rest.SetIdempotencyKey("r4")
	_, err = sc.Refunds.New(rest)
	require.Equal(t, stripe.ErrorCodeChargeAlreadyRefunded, stripeErr(t, err).Code)

	unknown := &stripe.RefundParams{PaymentIntent: stripe.String("pi_nope")}
	unknown.SetIdempotencyKey("r5")
	_, err = sc.Refunds.New(unknown)
	require.Equal(t, stripe.ErrorCodeResourceMissing, stripeErr(t, err).Code)

	require.Equal(t, 2, srv.Created(stripefake.KindRefund))
	got, err := sc.Refunds.Get(rf.ID, nil)
	require.NoError(t, err)
	require.Equal(t, "r-1", got.Metadata["effect"])

	it := sc.Refunds.List(&stripe.RefundListParams{PaymentIntent: stripe.String("pi_1")})
	n := 0
	for it.Next() {
		n++
	}
	require.NoError(t, it.Err())
	require.Equal(t, 2, n)
}

func TestCustomerBalanceTransaction(t *testing.T) {
	srv, sc := newServer(t)
	p := &stripe.CustomerBalanceTransactionParams{
		Customer:    stripe.String("cus_123"),
		Amount:      stripe.Int64(-500),
		Currency:    stripe.String(string(stripe.CurrencyEUR)),
		Description: stripe.String("goodwill credit"),
	}
	p.SetIdempotencyKey("c1")
	bt, err := sc.CustomerBalanceTransactions.New(p)
	require.NoError(t, err)
	require.Equal(t, "cbtxn_000001", bt.ID)
	require.Equal(t, int64(-500), bt.Amount)
	require.Equal(t, int64(-500), bt.EndingBalance)
	require.Equal(t, "cus_123", bt.Customer.ID)
	require.Equal(t, stripe.CustomerBalanceTransactionTypeAdjustment, bt.Type)
	require.Equal(t, "goodwill credit", bt.Description)

	again, err := sc.CustomerBalanceTransactions.New(p)
	require.NoError(t, err)
	require.Equal(t, bt.ID, again.ID)
	require.Equal(t, int64(-500), srv.CustomerBalance("cus_123"))
	require.Equal(t, 1, srv.Created(stripefake.KindCustomerBalanceTransaction))

	got, err := sc.CustomerBalanceTransactions.Get(bt.ID, &stripe.CustomerBalanceTransactionParams{Customer: stripe.String("cus_123")})
	require.NoError(t, err)
	require.Equal(t, bt.ID, got.ID)

	usd := *p
	usd.Currency = stripe.String("usd")
	usd.SetIdempotencyKey("c2")
	_, err = sc.CustomerBalanceTransactions.New(&usd)
	require.Equal(t, http.StatusBadRequest, stripeErr(t, err).HTTPStatusCode)

	bad := *p
	bad.Customer = stripe.String("nobody")
	bad.SetIdempotencyKey("c3")
	_, err = sc.CustomerBalanceTransactions.New(&bad)
	se := stripeErr(t, err)
	require.Equal(t, http.StatusNotFound, se.HTTPStatusCode)
	require.Equal(t, stripe.ErrorCodeResourceMissing, se.Code)
}

func rawPost(t *testing.T, srv *stripefake.Server, path, body, key string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, srv.URL()+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

func TestRequestsWithoutKeyAreExecutedAndCounted(t *testing.T) {
	srv, sc := newServer(t)
	resp, _ := rawPost(t, srv, "/v1/promotion_codes", "coupon=SPRING", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = rawPost(t, srv, "/v1/promotion_codes", "coupon=SPRING", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, 2, srv.RequestsWithoutKey())
	require.Equal(t, 2, srv.Created(stripefake.KindPromotionCode))

	_, err := sc.PromotionCodes.New(promoParams(""))
	require.NoError(t, err)
	require.Equal(t, 1, srv.RequestsWithGeneratedKey())
	require.Equal(t, 2, srv.RequestsWithoutKey())
}

func TestParametersAreComparedCanonically(t *testing.T) {
	srv, _ := newServer(t)
	resp, first := rawPost(t, srv, "/v1/promotion_codes", "coupon=SPRING&metadata[a]=x+y&metadata[b]=1", "k1")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, second := rawPost(t, srv, "/v1/promotion_codes", "metadata%5Bb%5D=1&coupon=SPRING&&metadata[a]=x%20y", "k1")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, first, second)

	resp, _ = rawPost(t, srv, "/v1/promotion_codes", "coupon=%zz", "k2")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	resp, _ = rawPost(t, srv, "/v1/promotion_codes", "coupon=SPRING&bogus=1", "k3")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	resp, body := rawPost(t, srv, "/v1/nothing", "", "k4")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Contains(t, body, "Unrecognized request URL")
	require.Equal(t, 1, srv.CreatedObjects())
}

func TestKeysAreScopedPerAPIKey(t *testing.T) {
	srv, sc := newServer(t)
	other := srv.Client("sk_test_other")
	a, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	b, err := other.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.NotEqual(t, a.ID, b.ID)
	require.Equal(t, 2, srv.Created(stripefake.KindPromotionCode))
}

// newAfterEvent sends a promotion code request whose context ends, as a
// client timeout does (context.DeadlineExceeded), once ready reports true:
// the test chooses what the server has done when the client gives up,
// rather than a wall-clock timeout that a loaded machine could overrun
// before the request even arrived. It returns the request's error.
func newAfterEvent(t *testing.T, sc *client.API, key string, ready func() bool) error {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	p := promoParams(key)
	p.Context = ctx
	done := make(chan error, 1)
	go func() {
		_, err := sc.PromotionCodes.New(p)
		done <- err
	}()
	require.Eventually(t, ready, 10*time.Second, time.Millisecond, "the request never got where the client gives up")
	cancel(context.DeadlineExceeded)
	return <-done
}

func TestDelayCanceledByClientExecutesNothing(t *testing.T) {
	srv, sc := newServer(t)
	// Held until the client goes away: no timer can end the wait first.
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultDelay, Release: make(chan struct{})})

	err := newAfterEvent(t, sc, "k1", func() bool { return srv.InFlight() == 1 })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Eventually(t, func() bool { return len(srv.Requests("k1")) == 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, 0, srv.CreatedObjects())
	require.Equal(t, 0, srv.InFlight())

	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Empty(t, pc.LastResponse.Header.Get("Idempotent-Replayed"))
}

func TestDelayAfterWriteClientTimesOutButObjectExists(t *testing.T) {
	srv, sc := newServer(t)
	release := make(chan struct{})
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultDelayAfterWrite, Release: release})

	// The client gives up once the object exists and the response is held.
	err := newAfterEvent(t, sc, "k1", func() bool { return srv.CreatedObjects() == 1 })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 1, srv.CreatedObjects())

	// Still in flight on the server: a retry now gets 409 until it finishes.
	require.Equal(t, 1, srv.InFlight())
	_, err = sc.PromotionCodes.New(promoParams("k1"))
	require.Equal(t, stripe.ErrorCodeIdempotencyKeyInUse, stripeErr(t, err).Code)

	close(release)
	require.Eventually(t, func() bool { return srv.InFlight() == 0 }, 5*time.Second, time.Millisecond)
	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	require.Equal(t, "true", pc.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, srv.CreatedObjects())
}

func TestFaultMatching(t *testing.T) {
	srv, sc := newServer(t)
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, Key: "other"})
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, Path: "/v1/refunds"})
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Path: "/v1/promotion_codes/*", Times: -1})

	_, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	_, err = sc.PromotionCodes.Get("promo_000001", nil) // GETs are not faulted by default
	require.NoError(t, err)
	for range 3 {
		up := &stripe.PromotionCodeParams{Active: stripe.Bool(false)}
		up.SetIdempotencyKey("u1")
		_, err = sc.PromotionCodes.Update("promo_000001", up)
		require.Equal(t, http.StatusInternalServerError, stripeErr(t, err).HTTPStatusCode)
	}
	require.Equal(t, 3, srv.PendingFaults())
	srv.ClearFaults()
	require.Equal(t, 0, srv.PendingFaults())

	require.Panics(t, func() { srv.InjectFault(stripefake.Fault{}) })
	require.Panics(t, func() { srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultDelay, Path: "["}) })
}

func TestOnRequestObservesEveryRequest(t *testing.T) {
	srv, sc := newServer(t)
	var mu sync.Mutex
	var seen []stripefake.RequestRecord
	srv.OnRequest(func(r stripefake.RequestRecord) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, r)
		_ = srv.RequestCount() // may call back into the server
	})
	_, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	_, err = sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 2)
	require.Equal(t, "k1", seen[0].IdempotencyKey)
	require.True(t, seen[1].Replayed)
	require.Equal(t, 2, srv.RequestCount())
	require.Len(t, srv.AllRequests(), 2)
}

func TestMissingAPIKey(t *testing.T) {
	srv, _ := newServer(t)
	resp, err := http.Post(srv.URL()+"/v1/promotion_codes", "application/x-www-form-urlencoded", strings.NewReader("coupon=SPRING"))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

func TestConcurrentDistinctKeys(t *testing.T) {
	srv, sc := newServer(t)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := []string{"a", "b", "c", "d"}[i%4]
			p := promoParams(key)
			for {
				_, err := sc.PromotionCodes.New(p)
				var se *stripe.Error
				if errors.As(err, &se) && se.Code == stripe.ErrorCodeIdempotencyKeyInUse {
					continue
				}
				errs <- err
				return
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, 4, srv.Created(stripefake.KindPromotionCode))
}
