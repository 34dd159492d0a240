package stripeeffect_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The Find functions run with the real stripe-go client against the fake
// Stripe over loopback HTTP; the fake's counters tell their list calls from
// creating POSTs.

var findKeys = idempotency.KeySpace{Namespace: "test.find", Version: 1}

func findKey(t *testing.T, name string, i int) idempotency.Key {
	t.Helper()
	k, err := findKeys.Key(idempotency.Str("case", name), idempotency.Int("i", int64(i)))
	require.NoError(t, err)
	return k
}

// findCase is one Find function with the create adapter it answers for.
// Every request req returns shares one scope (coupon and customer, payment
// intent, customer); others are requests of other scopes.
type findCase[Req, Res any] struct {
	name     string
	kind     stripefake.Kind
	listPath string // a path.Match pattern of the list, for faults
	seed     func(*stripefake.Server)
	req      func(i int) Req
	others   []Req
	create   func(context.Context, *client.API, idempotency.Key, Req) (Res, error)
	find     func(context.Context, *client.API, idempotency.Key, Req) (Res, bool, error)
	invalid  []Req // requests the Find function refuses before sending
}

// findWorld is one subtest's fake Stripe and client.
type findWorld struct {
	fake *stripefake.Server
	api  *client.API
}

func (c findCase[Req, Res]) world(t *testing.T) findWorld {
	t.Helper()
	fake := stripefake.New()
	t.Cleanup(fake.Close)
	c.seed(fake)
	return findWorld{fake: fake, api: stripeeffect.NewAPI("sk_test_find", &stripeeffect.APIConfig{URL: fake.URL()})}
}

// counts are the fake's request counters at one moment.
type counts struct{ requests, creates, lists int }

func (w findWorld) counts(kind stripefake.Kind) counts {
	return counts{w.fake.RequestCount(), w.fake.Calls(stripefake.OpCreate, ""), w.fake.Calls(stripefake.OpList, kind)}
}

// requireOnlyLists asserts that, since before, the code under test made
// exactly lists list calls of kind and no other request.
func (w findWorld) requireOnlyLists(t *testing.T, kind stripefake.Kind, before counts, lists int) {
	t.Helper()
	now := w.counts(kind)
	require.Equal(t, before.creates, now.creates, "creating POSTs")
	require.Equal(t, lists, now.lists-before.lists, "list calls")
	require.Equal(t, lists, now.requests-before.requests, "requests other than list calls")
}

func runFindCase[Req, Res any](t *testing.T, c findCase[Req, Res]) {
	ctx := context.Background()

	// create makes n objects in the scope under keys 0..n-1 and, every
	// tenth, one in each other scope, and returns the results in order.
	create := func(t *testing.T, w findWorld, n int) []Res {
		t.Helper()
		created := make([]Res, n)
		for i := range n {
			res, err := c.create(ctx, w.api, findKey(t, c.name, i), c.req(i))
			require.NoError(t, err)
			created[i] = res
			for j, o := range c.others {
				if i%10 == 0 {
					_, err := c.create(ctx, w.api, findKey(t, c.name+"-other", i*len(c.others)+j), o)
					require.NoError(t, err)
				}
			}
		}
		return created
	}

	t.Run("FindsEachKeyAmongOtherScopes", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		created := create(t, w, 12)
		for i := range created {
			before := w.counts(c.kind)
			got, found, err := c.find(ctx, w.api, findKey(t, c.name, i), c.req(i))
			require.NoError(t, err)
			require.True(t, found, "key %d", i)
			require.Equal(t, created[i], got, "key %d", i)
			w.requireOnlyLists(t, c.kind, before, 1)
		}
		before := w.counts(c.kind)
		_, found, err := c.find(ctx, w.api, findKey(t, c.name, len(created)), c.req(len(created)))
		require.NoError(t, err)
		require.False(t, found, "a key never used")
		w.requireOnlyLists(t, c.kind, before, 1)
	})

	t.Run("PagesNewestFirstAndStopsAtTheMatch", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		const n = 101 // pages of 100: 100, then 1
		created := create(t, w, n)
		for _, tc := range []struct{ i, lists int }{
			{n - 1, 1}, // the newest: first on the first page
			{1, 1},     // last on the first page
			{0, 2},     // the oldest: alone on the second page
		} {
			before := w.counts(c.kind)
			got, found, err := c.find(ctx, w.api, findKey(t, c.name, tc.i), c.req(tc.i))
			require.NoError(t, err)
			require.True(t, found, "key %d", tc.i)
			require.Equal(t, created[tc.i], got, "key %d", tc.i)
			w.requireOnlyLists(t, c.kind, before, tc.lists)
		}

		before := w.counts(c.kind)
		_, found, err := c.find(ctx, w.api, findKey(t, c.name, n), c.req(n))
		require.NoError(t, err)
		require.False(t, found, "a key never used")
		w.requireOnlyLists(t, c.kind, before, 2) // the whole scope, and only it

		// A page that fails is an error, never absence: the fault is armed
		// once the first page is answered, so the second page fails.
		w.fake.OnRequest(func(r stripefake.RequestRecord) {
			if r.Op == stripefake.OpList {
				w.fake.OnRequest(nil)
				w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite,
					Method: http.MethodGet, Path: c.listPath})
			}
		})
		before = w.counts(c.kind)
		_, found, err = c.find(ctx, w.api, findKey(t, c.name, n), c.req(n))
		requireStripeStatus(t, err, http.StatusInternalServerError)
		require.False(t, found)
		w.requireOnlyLists(t, c.kind, before, 2)
	})

	t.Run("EmptyScopeIsOneListCall", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		before := w.counts(c.kind)
		got, found, err := c.find(ctx, w.api, findKey(t, c.name, 0), c.req(0))
		require.NoError(t, err)
		require.False(t, found)
		var zero Res
		require.Equal(t, zero, got)
		w.requireOnlyLists(t, c.kind, before, 1)
	})

	t.Run("ObjectsOfAnotherScopeAreNotMatched", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		for j, o := range c.others {
			key := findKey(t, c.name+"-elsewhere", j)
			made, err := c.create(ctx, w.api, key, o)
			require.NoError(t, err)
			_, found, err := c.find(ctx, w.api, key, c.req(0))
			require.NoError(t, err)
			require.False(t, found, "the key's object is in another scope (%d)", j)
			got, found, err := c.find(ctx, w.api, key, o)
			require.NoError(t, err)
			require.True(t, found)
			require.Equal(t, made, got)
		}
	})

	t.Run("ObjectWhoseResponseWasLostIsFound", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		key := findKey(t, c.name, 0)
		w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost})
		_, err := c.create(ctx, w.api, key, c.req(0))
		require.Error(t, err, "the client never saw the response")
		require.Equal(t, 1, w.fake.Created(c.kind))

		before := w.counts(c.kind)
		got, found, err := c.find(ctx, w.api, key, c.req(0))
		require.NoError(t, err)
		require.True(t, found)
		w.requireOnlyLists(t, c.kind, before, 1)

		// What was found is what Stripe replays under the key.
		replayed, err := c.create(ctx, w.api, key, c.req(0))
		require.NoError(t, err)
		require.NotEqual(t, got, replayed, "the replay says so; the lookup does not")
		require.Equal(t, got, notReplayed(t, replayed))
		require.Equal(t, 1, w.fake.Created(c.kind))
	})

	t.Run("ObjectSentUnderASecondGenerationIsFoundByItsBusinessKey", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		base := findKey(t, c.name, 0)
		gen := base.WithGeneration(2)
		made, err := c.create(ctx, w.api, gen, c.req(0))
		require.NoError(t, err)

		// The header carries the generation; the metadata the business key.
		reqs := w.fake.Requests(base.String() + "~g2")
		require.Len(t, reqs, 1)
		require.Equal(t, gen.String(), reqs[0].IdempotencyKey)
		require.Empty(t, w.fake.Requests(base.String()))
		sent, err := url.ParseQuery(reqs[0].Params)
		require.NoError(t, err)
		require.Equal(t, base.String(), sent.Get("metadata["+stripeeffect.MetadataKey+"]"))

		for _, k := range []idempotency.Key{base, gen} {
			before := w.counts(c.kind)
			got, found, err := c.find(ctx, w.api, k, c.req(0))
			require.NoError(t, err)
			require.True(t, found, "found by %s", k)
			require.Equal(t, made, got)
			w.requireOnlyLists(t, c.kind, before, 1)
		}
		_, found, err := c.find(ctx, w.api, findKey(t, c.name, 1).WithGeneration(2), c.req(0))
		require.NoError(t, err)
		require.False(t, found, "another business key")
	})

	t.Run("SavedServerErrorLeavesNothingToFind", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		key := findKey(t, c.name, 0)
		w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorSavedBeforeWrite})
		_, err := c.create(ctx, w.api, key, c.req(0))
		requireStripeStatus(t, err, http.StatusInternalServerError)
		_, err = c.create(ctx, w.api, key, c.req(0))
		se := requireStripeStatus(t, err, http.StatusInternalServerError)
		require.True(t, stripeeffect.Replayed(se.LastResponse), "a retry gets the saved 500 back")

		before := w.counts(c.kind)
		_, found, err := c.find(ctx, w.api, key, c.req(0))
		require.NoError(t, err)
		require.False(t, found, "Stripe saved a failure and created nothing")
		w.requireOnlyLists(t, c.kind, before, 1)
		require.Equal(t, 0, w.fake.Created(c.kind))
	})

	t.Run("ListErrorIsAnErrorNotAbsence", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		key := findKey(t, c.name, 0)
		_, err := c.create(ctx, w.api, key, c.req(0))
		require.NoError(t, err)
		w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Method: http.MethodGet,
			Path: c.listPath, Status: http.StatusServiceUnavailable})
		_, found, err := c.find(ctx, w.api, key, c.req(0))
		requireStripeStatus(t, err, http.StatusServiceUnavailable)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.False(t, found)
		require.Equal(t, 0, w.fake.PendingFaults())
	})

	t.Run("CancelledContextIsUsed", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, found, err := c.find(cctx, w.api, findKey(t, c.name, 0), c.req(0))
		require.ErrorIs(t, err, context.Canceled)
		require.False(t, found)
	})

	t.Run("InvalidRequestsSendNothing", func(t *testing.T) {
		t.Parallel()
		w := c.world(t)
		for _, r := range c.invalid {
			_, found, err := c.find(ctx, w.api, findKey(t, c.name, 0), r)
			require.ErrorIs(t, err, stripeeffect.ErrInvalidRequest)
			require.ErrorIs(t, err, idempotency.ErrPermanent)
			require.False(t, found)
		}
		_, _, err := c.find(ctx, w.api, idempotency.Key{}, c.req(0))
		require.ErrorIs(t, err, stripeeffect.ErrNoKey)
		require.ErrorIs(t, err, idempotency.ErrPermanent)
		_, _, err = c.find(ctx, nil, findKey(t, c.name, 0), c.req(0))
		require.ErrorIs(t, err, stripeeffect.ErrInvalidRequest)
		_, _, err = c.find(ctx, &client.API{}, findKey(t, c.name, 0), c.req(0))
		require.ErrorIs(t, err, stripeeffect.ErrInvalidRequest)
		require.Equal(t, 0, w.fake.RequestCount())
	})
}

// notReplayed returns res with Replayed false: the result as first created.
func notReplayed(t *testing.T, res any) any {
	t.Helper()
	switch r := res.(type) {
	case stripeeffect.PromotionCodeResult:
		require.True(t, r.Replayed)
		r.Replayed = false
		return r
	case stripeeffect.RefundResult:
		require.True(t, r.Replayed)
		r.Replayed = false
		return r
	case stripeeffect.CreditResult:
		require.True(t, r.Replayed)
		r.Replayed = false
		return r
	}
	t.Fatalf("unexpected result %T", res)
	return nil
}

func requireStripeStatus(t *testing.T, err error, status int) *stripe.Error {
	t.Helper()
	var se *stripe.Error
	require.ErrorAs(t, err, &se)
	require.Equal(t, status, se.HTTPStatusCode, "%v", err)
	return se
}

func TestFindPromotionCode(t *testing.T) {
	t.Parallel()
	runFindCase(t, findCase[stripeeffect.PromotionCode, stripeeffect.PromotionCodeResult]{
		name:     "promo",
		kind:     stripefake.KindPromotionCode,
		listPath: "/v1/promotion_codes",
		seed: func(f *stripefake.Server) {
			f.AddCoupon(coupon, 10)
			f.AddCoupon("co_other", 20)
		},
		req: func(i int) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{Coupon: coupon, Customer: "cus_1", Metadata: map[string]string{"n": fmt.Sprint(i)}}
		},
		others: []stripeeffect.PromotionCode{
			{Coupon: coupon, Customer: "cus_2"},
			{Coupon: "co_other", Customer: "cus_1"},
		},
		create: func(ctx context.Context, api *client.API, key idempotency.Key, p stripeeffect.PromotionCode) (stripeeffect.PromotionCodeResult, error) {
			pc, err := stripeeffect.CreatePromotionCode(ctx, api, key, p)
			return stripeeffect.PromotionCodeResultOf(pc), err
		},
		find:    stripeeffect.FindPromotionCode,
		invalid: []stripeeffect.PromotionCode{{Customer: "cus_1"}, {Coupon: " ", Customer: "cus_1"}},
	})
}

func TestFindRefund(t *testing.T) {
	t.Parallel()
	runFindCase(t, findCase[stripeeffect.Refund, stripeeffect.RefundResult]{
		name:     "refund",
		kind:     stripefake.KindRefund,
		listPath: "/v1/refunds",
		seed: func(f *stripefake.Server) {
			f.AddPaymentIntent("pi_1", 1_000_000, "usd")
			f.AddPaymentIntent("pi_2", 1_000_000, "usd")
		},
		req: func(i int) stripeeffect.Refund {
			return stripeeffect.Refund{PaymentIntent: "pi_1", Amount: int64(1 + i%7), Metadata: map[string]string{"n": fmt.Sprint(i)}}
		},
		others: []stripeeffect.Refund{{PaymentIntent: "pi_2", Amount: 1}},
		create: func(ctx context.Context, api *client.API, key idempotency.Key, r stripeeffect.Refund) (stripeeffect.RefundResult, error) {
			rf, err := stripeeffect.CreateRefund(ctx, api, key, r)
			return stripeeffect.RefundResultOf(rf), err
		},
		find:    stripeeffect.FindRefund,
		invalid: []stripeeffect.Refund{{Amount: 100}, {PaymentIntent: "  "}},
	})
}

func TestFindCredit(t *testing.T) {
	t.Parallel()
	runFindCase(t, findCase[stripeeffect.Credit, stripeeffect.CreditResult]{
		name:     "credit",
		kind:     stripefake.KindCustomerBalanceTransaction,
		listPath: "/v1/customers/*/balance_transactions",
		seed:     func(*stripefake.Server) {},
		req: func(i int) stripeeffect.Credit {
			return stripeeffect.Credit{Customer: "cus_1", Amount: int64(100 + i), Currency: "usd"}
		},
		others: []stripeeffect.Credit{{Customer: "cus_2", Amount: 100, Currency: "usd"}},
		create: func(ctx context.Context, api *client.API, key idempotency.Key, c stripeeffect.Credit) (stripeeffect.CreditResult, error) {
			bt, err := stripeeffect.CreditBalance(ctx, api, key, c)
			return stripeeffect.CreditResultOf(bt), err
		},
		find:    stripeeffect.FindCredit,
		invalid: []stripeeffect.Credit{{Amount: 100, Currency: "usd"}, {Customer: " "}},
	})
}

// An unknown customer is Stripe's 404, not an empty list: nothing is known.
func TestFindCreditOfUnknownCustomerIsAnError(t *testing.T) {
	t.Parallel()
	fake := stripefake.New()
	t.Cleanup(fake.Close)
	api := stripeeffect.NewAPI("sk_test_find", &stripeeffect.APIConfig{URL: fake.URL()})
	_, found, err := stripeeffect.FindCredit(context.Background(), api, findKey(t, "credit", 0),
		stripeeffect.Credit{Customer: "not_a_customer", Amount: 1, Currency: "usd"})
	requireStripeStatus(t, err, http.StatusNotFound)
	require.ErrorIs(t, err, idempotency.ErrPermanent)
	require.False(t, found)
}

// stripe-mock checks the list requests against Stripe's OpenAPI spec. Its
// fixtures carry no metadata, so nothing is found.
func TestStripeMockFind(t *testing.T) {
	t.Parallel()
	url := stripeMockURL(t)
	ctx := context.Background()
	api, rec := stripeMockAPI(url)
	key := mockKeys.MustKey(idempotency.Str("op", "find"))

	_, found, err := stripeeffect.FindPromotionCode(ctx, api, key, stripeeffect.PromotionCode{Coupon: "co_123", Customer: "cus_123"})
	require.NoError(t, err)
	require.False(t, found)
	_, found, err = stripeeffect.FindPromotionCode(ctx, api, key, stripeeffect.PromotionCode{Coupon: "co_123"})
	require.NoError(t, err)
	require.False(t, found)
	_, found, err = stripeeffect.FindRefund(ctx, api, key, stripeeffect.Refund{PaymentIntent: "pi_123"})
	require.NoError(t, err)
	require.False(t, found)
	_, found, err = stripeeffect.FindCredit(ctx, api, key, stripeeffect.Credit{Customer: "cus_123"})
	require.NoError(t, err)
	require.False(t, found)
	// One page each, and no Idempotency-Key: lookups are GETs.
	require.Equal(t, []string{"", "", "", ""}, rec.seen())
}
