package stripefake_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// sameJSON asserts that two stripe-go objects hold the same fields (the
// response metadata, LastResponse, is not encoded).
func sameJSON(t *testing.T, want, got any) {
	t.Helper()
	w, err := json.Marshal(want)
	require.NoError(t, err)
	g, err := json.Marshal(got)
	require.NoError(t, err)
	require.JSONEq(t, string(w), string(g))
}

// getJSON sends a GET with an API key and decodes the body.
func getJSON(t *testing.T, srv *stripefake.Server, pathAndQuery string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL()+pathAndQuery, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(body, &out), "body: %s", body)
	return resp, out
}

func TestListsPageNewestFirstWithObjectsAsCreated(t *testing.T) {
	srv, sc := newServer(t)
	srv.AddCoupon("OTHER", 5)
	srv.AddPaymentIntent("pi_1", 100_000, "usd")
	srv.AddPaymentIntent("pi_2", 100_000, "usd")

	var promos []*stripe.PromotionCode
	var refunds []*stripe.Refund
	var credits []*stripe.CustomerBalanceTransaction
	for i := range 25 {
		p := promoParams(fmt.Sprintf("promo-%d", i))
		p.AddMetadata("n", fmt.Sprint(i))
		pc, err := sc.PromotionCodes.New(p)
		require.NoError(t, err)
		promos = append(promos, pc)

		rp := &stripe.RefundParams{PaymentIntent: stripe.String("pi_1"), Amount: stripe.Int64(int64(10 + i))}
		rp.AddMetadata("n", fmt.Sprint(i))
		rp.SetIdempotencyKey(fmt.Sprintf("refund-%d", i))
		rf, err := sc.Refunds.New(rp)
		require.NoError(t, err)
		refunds = append(refunds, rf)

		bp := &stripe.CustomerBalanceTransactionParams{Customer: stripe.String("cus_123"),
			Amount: stripe.Int64(int64(-100 - i)), Currency: stripe.String("usd")}
		bp.AddMetadata("n", fmt.Sprint(i))
		bp.SetIdempotencyKey(fmt.Sprintf("credit-%d", i))
		bt, err := sc.CustomerBalanceTransactions.New(bp)
		require.NoError(t, err)
		credits = append(credits, bt)

		// Noise in other scopes, interleaved with the objects listed below.
		other := promoParams(fmt.Sprintf("promo-other-customer-%d", i))
		other.Customer = stripe.String("cus_other")
		_, err = sc.PromotionCodes.New(other)
		require.NoError(t, err)
		other = promoParams(fmt.Sprintf("promo-other-coupon-%d", i))
		other.Coupon = stripe.String("OTHER")
		_, err = sc.PromotionCodes.New(other)
		require.NoError(t, err)
		rp = &stripe.RefundParams{PaymentIntent: stripe.String("pi_2"), Amount: stripe.Int64(1)}
		rp.SetIdempotencyKey(fmt.Sprintf("refund-other-%d", i))
		_, err = sc.Refunds.New(rp)
		require.NoError(t, err)
		bp = &stripe.CustomerBalanceTransactionParams{Customer: stripe.String("cus_other"),
			Amount: stripe.Int64(-1), Currency: stripe.String("usd")}
		bp.SetIdempotencyKey(fmt.Sprintf("credit-other-%d", i))
		_, err = sc.CustomerBalanceTransactions.New(bp)
		require.NoError(t, err)
	}
	creates := srv.Calls(stripefake.OpCreate, "")
	require.Equal(t, 25*7, creates)

	t.Run("PromotionCodesByCustomerAndCoupon", func(t *testing.T) {
		lists := srv.Calls(stripefake.OpList, stripefake.KindPromotionCode)
		lp := &stripe.PromotionCodeListParams{Customer: stripe.String("cus_123"), Coupon: stripe.String("SPRING")}
		lp.Limit = stripe.Int64(10)
		it := sc.PromotionCodes.List(lp)
		var got []*stripe.PromotionCode
		for it.Next() {
			got = append(got, it.PromotionCode())
		}
		require.NoError(t, it.Err())
		require.Len(t, got, 25)
		for i, pc := range got {
			sameJSON(t, promos[24-i], pc) // newest first, metadata included
		}
		require.Equal(t, map[string]string{"effect": "e-1", "n": "24"}, got[0].Metadata)
		require.Equal(t, 3, srv.Calls(stripefake.OpList, stripefake.KindPromotionCode)-lists) // 10 + 10 + 5
	})

	t.Run("RefundsByPaymentIntentAndCharge", func(t *testing.T) {
		lists := srv.Calls(stripefake.OpList, stripefake.KindRefund)
		for _, lp := range []*stripe.RefundListParams{
			{PaymentIntent: stripe.String("pi_1")},
			{Charge: stripe.String(refunds[0].Charge.ID)},
		} {
			lp.Limit = stripe.Int64(10)
			it := sc.Refunds.List(lp)
			var got []*stripe.Refund
			for it.Next() {
				got = append(got, it.Refund())
			}
			require.NoError(t, it.Err())
			require.Len(t, got, 25)
			for i, rf := range got {
				sameJSON(t, refunds[24-i], rf)
			}
		}
		require.Equal(t, 6, srv.Calls(stripefake.OpList, stripefake.KindRefund)-lists)
	})

	t.Run("BalanceTransactionsByCustomer", func(t *testing.T) {
		lists := srv.Calls(stripefake.OpList, stripefake.KindCustomerBalanceTransaction)
		lp := &stripe.CustomerBalanceTransactionListParams{Customer: stripe.String("cus_123")}
		lp.Limit = stripe.Int64(10)
		it := sc.CustomerBalanceTransactions.List(lp)
		var got []*stripe.CustomerBalanceTransaction
		for it.Next() {
			got = append(got, it.CustomerBalanceTransaction())
		}
		require.NoError(t, it.Err())
		require.Len(t, got, 25)
		for i, bt := range got {
			sameJSON(t, credits[24-i], bt)
		}
		require.Equal(t, 3, srv.Calls(stripefake.OpList, stripefake.KindCustomerBalanceTransaction)-lists)
	})

	t.Run("EndingBeforePagesBackwards", func(t *testing.T) {
		lp := &stripe.RefundListParams{PaymentIntent: stripe.String("pi_1")}
		lp.Limit = stripe.Int64(10)
		lp.EndingBefore = stripe.String(refunds[0].ID) // the oldest: everything is newer
		it := sc.Refunds.List(lp)
		var ids []string
		for it.Next() {
			ids = append(ids, it.Refund().ID)
		}
		require.NoError(t, it.Err())
		var want []string
		for _, rf := range refunds[1:] {
			want = append(want, rf.ID)
		}
		require.Equal(t, want, ids) // stripe-go turns each page around: oldest first
	})

	require.Equal(t, creates, srv.Calls(stripefake.OpCreate, ""), "listing created nothing")
}

func TestListFilters(t *testing.T) {
	srv, sc := newServer(t)
	srv.AddCoupon("OTHER", 5)
	codes := func(lp *stripe.PromotionCodeListParams) []string {
		t.Helper()
		var out []string
		it := sc.PromotionCodes.List(lp)
		for it.Next() {
			out = append(out, it.PromotionCode().Code)
		}
		require.NoError(t, it.Err())
		return out
	}
	mk := func(key, code, coupon, customer string) *stripe.PromotionCode {
		p := &stripe.PromotionCodeParams{Coupon: stripe.String(coupon), Code: stripe.String(code)}
		if customer != "" {
			p.Customer = stripe.String(customer)
		}
		p.SetIdempotencyKey(key)
		pc, err := sc.PromotionCodes.New(p)
		require.NoError(t, err)
		return pc
	}
	a := mk("a", "ALPHA", "SPRING", "cus_1")
	start := srv.Now().Unix()
	srv.Advance(time.Minute)
	mk("b", "BRAVO", "OTHER", "cus_1")
	srv.Advance(time.Minute)
	mk("c", "CHARLIE", "SPRING", "")
	up := &stripe.PromotionCodeParams{Active: stripe.Bool(false)}
	up.SetIdempotencyKey("deactivate-a")
	_, err := sc.PromotionCodes.Update(a.ID, up)
	require.NoError(t, err)

	require.Equal(t, []string{"CHARLIE", "BRAVO", "ALPHA"}, codes(&stripe.PromotionCodeListParams{}))
	require.Equal(t, []string{"BRAVO", "ALPHA"}, codes(&stripe.PromotionCodeListParams{Customer: stripe.String("cus_1")}))
	require.Equal(t, []string{"CHARLIE", "ALPHA"}, codes(&stripe.PromotionCodeListParams{Coupon: stripe.String("SPRING")}))
	require.Equal(t, []string{"CHARLIE", "BRAVO"}, codes(&stripe.PromotionCodeListParams{Active: stripe.Bool(true)}))
	require.Equal(t, []string{"ALPHA"}, codes(&stripe.PromotionCodeListParams{Active: stripe.Bool(false)}))
	require.Equal(t, []string{"BRAVO"}, codes(&stripe.PromotionCodeListParams{Code: stripe.String("bravo")}))
	require.Equal(t, []string{"ALPHA"}, codes(&stripe.PromotionCodeListParams{Created: stripe.Int64(start)}))
	require.Equal(t, []string{"CHARLIE", "BRAVO"}, codes(&stripe.PromotionCodeListParams{
		CreatedRange: &stripe.RangeQueryParams{GreaterThan: start}}))
	require.Equal(t, []string{"BRAVO"}, codes(&stripe.PromotionCodeListParams{
		CreatedRange: &stripe.RangeQueryParams{GreaterThanOrEqual: start + 60, LesserThan: start + 120}}))
	require.Equal(t, []string{"BRAVO", "ALPHA"}, codes(&stripe.PromotionCodeListParams{
		CreatedRange: &stripe.RangeQueryParams{LesserThanOrEqual: start + 60}}))

	srv.AddPaymentIntent("pi_1", 1000, "usd")
	rp := &stripe.RefundParams{PaymentIntent: stripe.String("pi_1"), Amount: stripe.Int64(1)}
	rp.SetIdempotencyKey("r")
	rf, err := sc.Refunds.New(rp)
	require.NoError(t, err)
	for created, want := range map[int64]int{rf.Created: 1, rf.Created + 1: 0} {
		it := sc.Refunds.List(&stripe.RefundListParams{Created: stripe.Int64(created)})
		n := 0
		for it.Next() {
			n++
		}
		require.NoError(t, it.Err())
		require.Equal(t, want, n, "created=%d", created)
	}

	resp, body := getJSON(t, srv, "/v1/promotion_codes?created[since]=1")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, body)
	require.Equal(t, "parameter_unknown", body["error"].(map[string]any)["code"])
	resp, body = getJSON(t, srv, "/v1/customers/cus_1/balance_transactions?coupon=SPRING")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, body)
}

func TestListShapeAndLimits(t *testing.T) {
	srv, sc := newServer(t)
	for i := range 12 {
		_, err := sc.PromotionCodes.New(promoParams(fmt.Sprintf("k%d", i)))
		require.NoError(t, err)
	}

	resp, body := getJSON(t, srv, "/v1/promotion_codes")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "list", body["object"])
	require.Equal(t, "/v1/promotion_codes", body["url"])
	require.Equal(t, true, body["has_more"])
	data := body["data"].([]any)
	require.Len(t, data, 10, "default limit")
	first := data[0].(map[string]any)
	require.Equal(t, "promo_000012", first["id"])
	require.Equal(t, "promotion_code", first["object"])
	require.Equal(t, map[string]any{"effect": "e-1"}, first["metadata"])

	_, body = getJSON(t, srv, "/v1/promotion_codes?limit=100&starting_after=promo_000003")
	require.Equal(t, false, body["has_more"])
	require.Len(t, body["data"].([]any), 2)

	_, body = getJSON(t, srv, "/v1/refunds?payment_intent=pi_none")
	require.Equal(t, []any{}, body["data"], "an empty list has data [], not null")
	require.Equal(t, "/v1/refunds", body["url"])
	_, body = getJSON(t, srv, "/v1/customers/cus_9/balance_transactions")
	require.Equal(t, "/v1/customers/cus_9/balance_transactions", body["url"])

	for _, q := range []string{"limit=0", "limit=101", "limit=x", "starting_after=promo_999999"} {
		resp, body := getJSON(t, srv, "/v1/promotion_codes?"+q)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, q)
		require.Equal(t, "invalid_request_error", body["error"].(map[string]any)["type"], q)
	}
	resp, _ = getJSON(t, srv, "/v1/customers/not_a_customer/balance_transactions")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// Every response carries a Request-Id of its own; a keyed POST that
// executed also names itself in Original-Request, and a replay gets a new
// Request-Id and names the first request there (as Stripe does).
func TestEveryResponseCarriesItsOwnRequestID(t *testing.T) {
	srv, sc := newServer(t)
	srv.AddPaymentIntent("pi_1", 1000, "usd")
	seen := map[string]string{}
	check := func(what string, h http.Header) string {
		t.Helper()
		id := h.Get("Request-Id")
		require.True(t, strings.HasPrefix(id, "req_"), "%s: Request-Id %q", what, id)
		require.NotContains(t, seen, id, "%s reuses the Request-Id of %s", what, seen[id])
		seen[id] = what
		return id
	}

	first, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	firstID := check("create", first.LastResponse.Header)
	require.Equal(t, firstID, first.LastResponse.Header.Get("Original-Request"))

	replay, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	check("replay", replay.LastResponse.Header)
	require.Equal(t, "true", replay.LastResponse.Header.Get("Idempotent-Replayed"))
	require.Equal(t, firstID, replay.LastResponse.Header.Get("Original-Request"))

	bad := promoParams("k1")
	bad.MaxRedemptions = stripe.Int64(5)
	_, err = sc.PromotionCodes.New(bad)
	se := stripeErr(t, err)
	check("idempotency error", se.LastResponse.Header)
	require.Empty(t, se.LastResponse.Header.Get("Original-Request"), "nothing saved: no original")
	require.Equal(t, se.LastResponse.Header.Get("Request-Id"), se.RequestID)

	unknown := &stripe.PromotionCodeParams{Coupon: stripe.String("NOPE")}
	unknown.SetIdempotencyKey("k2")
	_, err = sc.PromotionCodes.New(unknown)
	check("validation error", stripeErr(t, err).LastResponse.Header)

	_, err = sc.PromotionCodes.Get("promo_nope", nil)
	check("404", stripeErr(t, err).LastResponse.Header)

	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit})
	_, err = sc.PromotionCodes.New(promoParams("k3"))
	check("429", stripeErr(t, err).LastResponse.Header)

	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorAfterWrite})
	_, err = sc.PromotionCodes.New(promoParams("k4"))
	se = stripeErr(t, err)
	failedID := check("saved 500", se.LastResponse.Header)
	require.Equal(t, failedID, se.LastResponse.Header.Get("Original-Request"))
	_, err = sc.PromotionCodes.New(promoParams("k4"))
	se = stripeErr(t, err)
	check("replayed 500", se.LastResponse.Header)
	require.Equal(t, failedID, se.LastResponse.Header.Get("Original-Request"))

	it := sc.PromotionCodes.List(&stripe.PromotionCodeListParams{})
	for it.Next() {
	}
	require.NoError(t, it.Err())
	check("list", it.PromotionCodeList().LastResponse.Header)

	resp, err := http.Get(srv.URL() + "/v1/promotion_codes")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	check("401", resp.Header)
	resp, _ = getJSON(t, srv, "/v1/nothing_here")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	check("unrouted", resp.Header)

	// The records carry the same ids as the headers.
	for _, r := range srv.AllRequests() {
		require.Contains(t, seen, r.RequestID)
	}
}

// A request that began executing and failed without writing: Stripe saved
// the 5xx, a retry gets it back, and only a list shows that nothing exists.
func TestServerErrorSavedBeforeWriteCreatesNothing(t *testing.T) {
	srv, sc := newServer(t)
	srv.AddPaymentIntent("pi_1", 1000, "usd")
	cases := []struct {
		name string
		kind stripefake.Kind
		send func(key string) error
		list func() int
	}{
		{"PromotionCode", stripefake.KindPromotionCode,
			func(key string) error { _, err := sc.PromotionCodes.New(promoParams(key)); return err },
			func() int {
				it := sc.PromotionCodes.List(&stripe.PromotionCodeListParams{Customer: stripe.String("cus_123")})
				return count(t, it.Next, it.Err)
			}},
		{"Refund", stripefake.KindRefund,
			func(key string) error {
				p := &stripe.RefundParams{PaymentIntent: stripe.String("pi_1"), Amount: stripe.Int64(100)}
				p.SetIdempotencyKey(key)
				_, err := sc.Refunds.New(p)
				return err
			},
			func() int {
				it := sc.Refunds.List(&stripe.RefundListParams{PaymentIntent: stripe.String("pi_1")})
				return count(t, it.Next, it.Err)
			}},
		{"CustomerBalanceTransaction", stripefake.KindCustomerBalanceTransaction,
			func(key string) error {
				p := &stripe.CustomerBalanceTransactionParams{Customer: stripe.String("cus_123"),
					Amount: stripe.Int64(-100), Currency: stripe.String("usd")}
				p.SetIdempotencyKey(key)
				_, err := sc.CustomerBalanceTransactions.New(p)
				return err
			},
			func() int {
				it := sc.CustomerBalanceTransactions.List(&stripe.CustomerBalanceTransactionListParams{
					Customer: stripe.String("cus_123")})
				return count(t, it.Next, it.Err)
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := "saved-500-" + c.name
			srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorSavedBeforeWrite})
			se := stripeErr(t, c.send(key))
			require.Equal(t, http.StatusInternalServerError, se.HTTPStatusCode)
			require.Equal(t, stripe.ErrorTypeAPI, se.Type)
			require.Equal(t, "false", se.LastResponse.Header.Get("Stripe-Should-Retry"))
			require.Empty(t, se.LastResponse.Header.Get("Idempotent-Replayed"))
			require.Equal(t, 0, srv.PendingFaults())

			se = stripeErr(t, c.send(key))
			require.Equal(t, http.StatusInternalServerError, se.HTTPStatusCode)
			require.Equal(t, "true", se.LastResponse.Header.Get("Idempotent-Replayed"))

			require.Equal(t, 0, c.list())
			require.Equal(t, 0, srv.Created(c.kind))
			recs := srv.Requests(key)
			require.Len(t, recs, 2)
			require.True(t, recs[0].Executed)
			require.Equal(t, stripefake.FaultServerErrorSavedBeforeWrite, recs[0].Fault)
			require.Empty(t, recs[0].ObjectID)
			require.True(t, recs[1].Replayed)

			// Another key executes normally.
			require.NoError(t, c.send(key+"-other"))
			require.Equal(t, 1, c.list())
		})
	}
	require.Equal(t, int64(100), srv.Refunded("pi_1"), "the failed refund drew nothing")
	require.Equal(t, int64(-100), srv.CustomerBalance("cus_123"), "the failed credit changed nothing")

	t.Run("HandedBackWhenTheParametersAreRejected", func(t *testing.T) {
		srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorSavedBeforeWrite})
		p := &stripe.PromotionCodeParams{Coupon: stripe.String("NOPE")}
		p.SetIdempotencyKey("rejected")
		require.Equal(t, stripe.ErrorCodeResourceMissing, stripeErr(t, errOf(sc.PromotionCodes.New(p))).Code)
		require.Equal(t, 1, srv.PendingFaults())
		srv.ClearFaults()
	})

	t.Run("DeactivationWritesNothing", func(t *testing.T) {
		pc, err := sc.PromotionCodes.New(promoParams("to-deactivate"))
		require.NoError(t, err)
		srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorSavedBeforeWrite})
		up := &stripe.PromotionCodeParams{Active: stripe.Bool(false)}
		up.SetIdempotencyKey("deactivate")
		require.Equal(t, http.StatusInternalServerError, stripeErr(t, errOf(sc.PromotionCodes.Update(pc.ID, up))).HTTPStatusCode)
		got, err := sc.PromotionCodes.Get(pc.ID, nil)
		require.NoError(t, err)
		require.True(t, got.Active)
	})
}

// A response lost after the write: the client saw a network error, the
// object exists and is listed with its metadata.
func TestResponseLostLeavesTheObjectListed(t *testing.T) {
	srv, sc := newServer(t)
	srv.AddPaymentIntent("pi_1", 1000, "usd")

	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost})
	_, err := sc.PromotionCodes.New(promoParams("lost-promo"))
	require.Error(t, err)
	var se *stripe.Error
	require.NotErrorAs(t, err, &se, "a network error, not a Stripe answer")
	it := sc.PromotionCodes.List(&stripe.PromotionCodeListParams{Customer: stripe.String("cus_123")})
	require.True(t, it.Next())
	require.Equal(t, "e-1", it.PromotionCode().Metadata["effect"])
	require.Equal(t, srv.Objects()[0].ID, it.PromotionCode().ID)
	require.False(t, it.Next())
	require.NoError(t, it.Err())

	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost})
	rp := &stripe.RefundParams{PaymentIntent: stripe.String("pi_1"), Amount: stripe.Int64(300)}
	rp.AddMetadata("idempotency_key", "lost-refund")
	rp.SetIdempotencyKey("lost-refund")
	_, err = sc.Refunds.New(rp)
	require.Error(t, err)
	rit := sc.Refunds.List(&stripe.RefundListParams{PaymentIntent: stripe.String("pi_1")})
	require.True(t, rit.Next())
	require.Equal(t, "lost-refund", rit.Refund().Metadata["idempotency_key"])
	require.Equal(t, int64(300), rit.Refund().Amount)
	require.False(t, rit.Next())
	require.NoError(t, rit.Err())

	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost})
	bp := &stripe.CustomerBalanceTransactionParams{Customer: stripe.String("cus_123"),
		Amount: stripe.Int64(-700), Currency: stripe.String("usd")}
	bp.AddMetadata("idempotency_key", "lost-credit")
	bp.SetIdempotencyKey("lost-credit")
	_, err = sc.CustomerBalanceTransactions.New(bp)
	require.Error(t, err)
	bit := sc.CustomerBalanceTransactions.List(&stripe.CustomerBalanceTransactionListParams{Customer: stripe.String("cus_123")})
	require.True(t, bit.Next())
	require.Equal(t, "lost-credit", bit.CustomerBalanceTransaction().Metadata["idempotency_key"])
	require.Equal(t, int64(-700), bit.CustomerBalanceTransaction().EndingBalance)
	require.False(t, bit.Next())
	require.NoError(t, bit.Err())
}

func TestCallsCountsReadsApartFromWrites(t *testing.T) {
	srv, sc := newServer(t)
	pc, err := sc.PromotionCodes.New(promoParams("k1"))
	require.NoError(t, err)
	_, err = sc.PromotionCodes.New(promoParams("k1")) // replay: still a creating POST
	require.NoError(t, err)
	_, err = sc.PromotionCodes.Get(pc.ID, nil)
	require.NoError(t, err)
	up := &stripe.PromotionCodeParams{Active: stripe.Bool(false)}
	up.SetIdempotencyKey("u1")
	_, err = sc.PromotionCodes.Update(pc.ID, up)
	require.NoError(t, err)
	lp := &stripe.PromotionCodeListParams{}
	lp.Limit = stripe.Int64(1)
	require.Equal(t, 1, count(t, sc.PromotionCodes.List(lp).Next, func() error { return nil }))
	_, err = sc.Refunds.Get("re_nope", nil) // rejected, counted all the same
	require.Error(t, err)
	resp, _ := getJSON(t, srv, "/v1/charges")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	require.Equal(t, 2, srv.Calls(stripefake.OpCreate, ""))
	require.Equal(t, 2, srv.Calls(stripefake.OpCreate, stripefake.KindPromotionCode))
	require.Equal(t, 0, srv.Calls(stripefake.OpCreate, stripefake.KindRefund))
	require.Equal(t, 1, srv.Calls(stripefake.OpUpdate, ""))
	require.Equal(t, 2, srv.Calls(stripefake.OpRetrieve, ""))
	require.Equal(t, 1, srv.Calls(stripefake.OpRetrieve, stripefake.KindRefund))
	require.Equal(t, 1, srv.Calls(stripefake.OpList, stripefake.KindPromotionCode))
	require.Equal(t, 1, srv.Calls(stripefake.OpNone, ""))
	recs := srv.AllRequests()
	require.Equal(t, stripefake.OpCreate, recs[0].Op)
	require.Equal(t, stripefake.KindPromotionCode, recs[0].Kind)
}

// A fault with Method GET fails list calls, on any page.
func TestListFaults(t *testing.T) {
	srv, sc := newServer(t)
	for i := range 3 {
		_, err := sc.PromotionCodes.New(promoParams(fmt.Sprintf("k%d", i)))
		require.NoError(t, err)
	}
	srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Method: http.MethodGet,
		Path: "/v1/promotion_codes", Status: http.StatusServiceUnavailable})
	it := sc.PromotionCodes.List(&stripe.PromotionCodeListParams{})
	require.False(t, it.Next())
	require.Equal(t, http.StatusServiceUnavailable, stripeErr(t, it.Err()).HTTPStatusCode)

	// Armed after the first page was answered: the second page fails.
	srv.OnRequest(func(r stripefake.RequestRecord) {
		if r.Op == stripefake.OpList {
			srv.OnRequest(nil)
			srv.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Method: http.MethodGet,
				Path: "/v1/promotion_codes"})
		}
	})
	lp := &stripe.PromotionCodeListParams{}
	lp.Limit = stripe.Int64(2)
	it = sc.PromotionCodes.List(lp)
	require.True(t, it.Next())
	require.True(t, it.Next())
	require.False(t, it.Next())
	require.Equal(t, http.StatusInternalServerError, stripeErr(t, it.Err()).HTTPStatusCode)
	require.Equal(t, 3, srv.Calls(stripefake.OpList, stripefake.KindPromotionCode))
	require.Equal(t, 3, srv.Created(stripefake.KindPromotionCode))
}

// count drains an iterator.
func count(t *testing.T, next func() bool, errf func() error) int {
	t.Helper()
	n := 0
	for next() {
		n++
	}
	require.NoError(t, errf())
	return n
}

func errOf[T any](_ T, err error) error { return err }
