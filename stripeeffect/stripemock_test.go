package stripeeffect_test

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/stripeeffect"
)

// Contract tests against stripe-mock, Stripe's official mock, which checks
// every request against Stripe's OpenAPI spec. It is stateless (no replays,
// no 409): the fake covers those; this proves the request shapes.

// stripeMockURL returns STRIPE_MOCK_URL. It skips the test when the
// variable is unset, or fails it when TEST_STRIPE_MOCK_REQUIRED=1.
func stripeMockURL(t *testing.T) string {
	t.Helper()
	url := strings.TrimRight(os.Getenv("STRIPE_MOCK_URL"), "/")
	if url == "" {
		msg := "stripe-mock not running: set STRIPE_MOCK_URL=http://127.0.0.1:12111 " +
			"(go install github.com/stripe/stripe-mock@v0.183.0; " +
			"stripe-mock -http-addr 127.0.0.1:12111 -https-addr 127.0.0.1:12112)"
		if os.Getenv("TEST_STRIPE_MOCK_REQUIRED") == "1" {
			t.Fatal(msg + ", required by TEST_STRIPE_MOCK_REQUIRED=1")
		}
		t.Skip(msg)
	}
	return url
}

// stripeMockAPI returns a client for the stripe-mock at url and the
// recorder of the Idempotency-Key headers it sends.
func stripeMockAPI(url string) (*client.API, *recorder) {
	rec := &recorder{next: http.DefaultTransport}
	api := stripeeffect.NewAPI("sk_test_123", &stripeeffect.APIConfig{
		URL: url, HTTPClient: &http.Client{Transport: rec, Timeout: 10 * time.Second},
	})
	return api, rec
}

var mockKeys = idempotency.KeySpace{Namespace: "contract.stripemock", Version: 1}

func TestStripeMockContract(t *testing.T) {
	t.Parallel()
	url := stripeMockURL(t)
	ctx := context.Background()

	t.Run("CreatePromotionCode", func(t *testing.T) {
		t.Parallel()
		api, rec := stripeMockAPI(url)
		key := mockKeys.MustKey(idempotency.Str("op", "promo"))
		pc, err := stripeeffect.CreatePromotionCode(ctx, api, key, stripeeffect.PromotionCode{
			Coupon: "co_123", Customer: "cus_123", Code: "ANNIV10",
			Metadata: map[string]string{"user_id": "u_1"},
		})
		require.NoError(t, err)
		require.NotEmpty(t, pc.ID)
		require.Equal(t, []string{key.String()}, rec.seen())
	})

	t.Run("CreatePromotionCodeWithoutOptionalFields", func(t *testing.T) {
		t.Parallel()
		api, _ := stripeMockAPI(url)
		_, err := stripeeffect.CreatePromotionCode(ctx, api, mockKeys.MustKey(idempotency.Str("op", "promo-min")),
			stripeeffect.PromotionCode{Coupon: "co_123"})
		require.NoError(t, err)
	})

	t.Run("CreatePromotionCodeUnderASecondGeneration", func(t *testing.T) {
		t.Parallel()
		api, rec := stripeMockAPI(url)
		key := mockKeys.MustKey(idempotency.Str("op", "promo-gen")).WithGeneration(2)
		_, err := stripeeffect.CreatePromotionCode(ctx, api, key, stripeeffect.PromotionCode{Coupon: "co_123", Customer: "cus_123"})
		require.NoError(t, err)
		require.Equal(t, []string{key.String()}, rec.seen())
		require.True(t, strings.HasSuffix(rec.seen()[0], "~g2"))
	})

	t.Run("DeactivatePromotionCode", func(t *testing.T) {
		t.Parallel()
		api, rec := stripeMockAPI(url)
		key := mockKeys.MustKey(idempotency.Str("op", "deactivate"))
		pc, err := stripeeffect.DeactivatePromotionCode(ctx, api, key, "promo_123")
		require.NoError(t, err)
		require.NotEmpty(t, pc.ID)
		require.Equal(t, []string{key.String()}, rec.seen())
	})

	t.Run("CreateRefund", func(t *testing.T) {
		t.Parallel()
		api, rec := stripeMockAPI(url)
		key := mockKeys.MustKey(idempotency.Str("op", "refund"))
		rf, err := stripeeffect.CreateRefund(ctx, api, key, stripeeffect.Refund{
			PaymentIntent: "pi_123", Amount: 1200, Reason: "requested_by_customer",
			Metadata: map[string]string{"refund_request": "rr_1"},
		})
		require.NoError(t, err)
		require.NotEmpty(t, rf.ID)
		require.Equal(t, []string{key.String()}, rec.seen())
	})

	t.Run("CreateFullRefund", func(t *testing.T) {
		t.Parallel()
		api, _ := stripeMockAPI(url)
		_, err := stripeeffect.CreateRefund(ctx, api, mockKeys.MustKey(idempotency.Str("op", "refund-full")),
			stripeeffect.Refund{PaymentIntent: "pi_123"})
		require.NoError(t, err)
	})

	t.Run("CreditBalance", func(t *testing.T) {
		t.Parallel()
		api, rec := stripeMockAPI(url)
		key := mockKeys.MustKey(idempotency.Str("op", "credit"))
		bt, err := stripeeffect.CreditBalance(ctx, api, key, stripeeffect.Credit{
			Customer: "cus_123", Amount: 1500, Currency: "usd", Description: "One month on us",
			Metadata: map[string]string{"incident": "dup-codes"},
		})
		require.NoError(t, err)
		require.NotEmpty(t, bt.ID)
		require.Equal(t, []string{key.String()}, rec.seen())
	})

	t.Run("EffectsRunThroughTheExecutor", func(t *testing.T) {
		t.Parallel()
		api, rec := stripeMockAPI(url)
		exec, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
		require.NoError(t, err)
		eff := stripeeffect.PromotionCodeEffect(api, "contract.promo", grantKey, func(g grant) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{Coupon: "co_123", Customer: "cus_123"}
		})
		g := grant{User: "u_1", Sub: "sub_1"}
		res, err := idempotency.Run(ctx, exec, eff, g)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.NotEmpty(t, res.Value.ID)
		require.Equal(t, []string{mustGrantKey(t, g).String()}, rec.seen())
	})

	// stripe-mock really validates: an unknown parameter is refused, and
	// the refusal is classified permanent.
	t.Run("UnknownParameterIsRefusedAsPermanent", func(t *testing.T) {
		t.Parallel()
		api, _ := stripeMockAPI(url)
		params := &stripe.PromotionCodeParams{Coupon: stripe.String("co_123")}
		params.SetIdempotencyKey(mockKeys.MustKey(idempotency.Str("op", "bogus")).String())
		params.AddExtra("not_a_stripe_parameter", "1")
		_, err := api.PromotionCodes.New(params)
		require.Error(t, err)
		err = stripeeffect.Classify(err)
		require.ErrorIs(t, err, idempotency.ErrPermanent)
		var se *stripe.Error
		require.ErrorAs(t, err, &se)
		require.Equal(t, http.StatusBadRequest, se.HTTPStatusCode)
		require.Equal(t, stripe.ErrorTypeInvalidRequest, se.Type)
	})
}
