package stripeeffect_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

const (
	coupon = "co_anniversary"
	lease  = time.Minute
)

// grant is one subscriber owed an anniversary code.
type grant struct {
	User, Sub, Customer string
	Code                string // optional customer-facing code
}

var grantKeys = idempotency.KeySpace{Namespace: "test.anniversary", Version: 1}

func grantKey(g grant) (idempotency.Key, error) {
	return grantKeys.Key(idempotency.Str("user", g.User), idempotency.Str("sub", g.Sub), idempotency.Int("milestone", 12))
}

func mustGrantKey(t *testing.T, g grant) idempotency.Key {
	t.Helper()
	k, err := grantKey(g)
	require.NoError(t, err)
	return k
}

func promoRequest(g grant) stripeeffect.PromotionCode {
	return stripeeffect.PromotionCode{
		Coupon: coupon, Customer: g.Customer, Code: g.Code,
		Metadata: map[string]string{"user_id": g.User},
	}
}

// fastRetry keeps in-run retries quick in tests.
var fastRetry = idempotency.RetryPolicy{MaxAttempts: 4, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 2 * time.Second}

// bundle is one test's world: a fake Stripe with its client, and an
// executor over an in-memory ledger, all on one fake clock (stripefake's
// clock is set from it and advanced with it).
type bundle struct {
	ctx    context.Context
	fake   *stripefake.Server
	api    *client.API
	clock  *clocktest.Clock
	exec   *idempotency.Executor
	effect *idempotency.Effect[grant, stripeeffect.PromotionCodeResult]
	g      grant
	key    idempotency.Key
}

func setup(t *testing.T) *bundle {
	t.Helper()
	fake := stripefake.New()
	t.Cleanup(fake.Close)
	fake.AddCoupon(coupon, 10)
	fake.AddPaymentIntent("pi_1", 5000, "usd")
	clock := clocktest.New()
	fake.SetNow(clock.Now())
	exec, err := idempotency.NewExecutor(idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: clock.Now}),
		&idempotency.Config{Lease: lease, Now: clock.Now})
	require.NoError(t, err)
	api := stripeeffect.NewAPI("sk_test_effects", &stripeeffect.APIConfig{URL: fake.URL()})
	eff := stripeeffect.PromotionCodeEffect(api, "test.anniversary", grantKey, promoRequest)
	retry := fastRetry
	eff.Retry = &retry
	g := grant{User: "u_1", Sub: "sub_1", Customer: "cus_1"}
	return &bundle{ctx: context.Background(), fake: fake, api: api, clock: clock, exec: exec, effect: eff, g: g, key: mustGrantKey(t, g)}
}

// advance moves the ledger's clock and Stripe's together.
func (b *bundle) advance(d time.Duration) {
	b.clock.Advance(d)
	b.fake.Advance(d)
}

func (b *bundle) run(t *testing.T) (idempotency.Result[stripeeffect.PromotionCodeResult], error) {
	t.Helper()
	return idempotency.Run(b.ctx, b.exec, b.effect, b.g)
}

// requireSameKeyEverywhere checks that every POST the fake saw carried the
// effect's key: none without a key, none with a key stripe-go invented.
func requireSameKeyEverywhere(t *testing.T, b *bundle) {
	t.Helper()
	require.Zero(t, b.fake.RequestsWithoutKey(), "a request went out without an Idempotency-Key")
	require.Zero(t, b.fake.RequestsWithGeneratedKey(), "a request went out with a key stripe-go invented")
	for _, r := range b.fake.AllRequests() {
		if r.Method == http.MethodPost {
			require.Equal(t, b.key.String(), r.IdempotencyKey, "request %d", r.Seq)
		}
	}
}

func TestPromotionCodeEffect(t *testing.T) {
	t.Parallel()

	t.Run("CreatesTheCodeOnceAcrossRuns", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		first, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, first.Outcome)
		require.Equal(t, 1, first.Calls)
		require.False(t, first.Value.Replayed)
		require.Equal(t, coupon, first.Value.Coupon)
		require.Equal(t, "cus_1", first.Value.Customer)
		require.True(t, first.Value.Active)

		second, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeAlreadyApplied, second.Outcome)
		require.Zero(t, second.Calls)
		require.Equal(t, first.Value, second.Value)

		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
		require.Len(t, b.fake.Requests(b.key.String()), 1)
		requireSameKeyEverywhere(t, b)

		// The code is single-use and carries the key for reconciliation.
		pc, err := b.api.PromotionCodes.Get(first.Value.ID, nil)
		require.NoError(t, err)
		require.EqualValues(t, 1, pc.MaxRedemptions)
		require.Equal(t, b.key.String(), pc.Metadata[stripeeffect.MetadataKey])
		require.Equal(t, "u_1", pc.Metadata["user_id"])
	})

	t.Run("ResponseLostThenNextRunGetsTheSameCode", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.effect.Retry = &idempotency.RetryPolicy{MaxAttempts: 1}
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/promotion_codes"})

		first, err := b.run(t)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, idempotency.OutcomeRetryable, first.Outcome)
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode), "the write happened, only the answer was lost")

		second, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, second.Outcome)
		require.True(t, second.Value.Replayed)
		require.Equal(t, b.fake.Objects()[0].ID, second.Value.ID)
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
		require.Len(t, b.fake.Requests(b.key.String()), 2)
		requireSameKeyEverywhere(t, b)
	})

	t.Run("ResponseLostIsRetriedInRunUnderTheSameKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/promotion_codes"})
		res, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 2, res.Calls)
		require.True(t, res.Value.Replayed)
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
		requireSameKeyEverywhere(t, b)
	})

	t.Run("RetriesInRunOn429UnderTheSameKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultLockTimeout, Path: "/v1/promotion_codes"})
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, Path: "/v1/promotion_codes", RetryAfter: time.Second})
		start := time.Now()
		res, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 3, res.Calls)
		require.GreaterOrEqual(t, time.Since(start), time.Second, "Retry-After was not honoured")

		reqs := b.fake.Requests(b.key.String())
		require.Len(t, reqs, 3)
		require.Equal(t, []int{429, 429, 200}, []int{reqs[0].Status, reqs[1].Status, reqs[2].Status})
		require.Equal(t, []string{"lock_timeout", "rate_limit", ""}, []string{reqs[0].ErrorCode, reqs[1].ErrorCode, reqs[2].ErrorCode})
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
		requireSameKeyEverywhere(t, b)
	})

	t.Run("RetriesInRunOn409UntilTheOtherRequestFinishes", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.effect.Retry = &idempotency.RetryPolicy{MaxAttempts: 8, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
		// Another worker (a previous deploy, a process outside the ledger)
		// is sending the same request under the same key, and Stripe is
		// slow to answer it.
		release := make(chan struct{})
		// At the first 409, let the other request go and wait until it
		// has finished (its record, the only one that executed, comes
		// after its key left flight): the run's next attempt then gets
		// the replay, whatever its backoff and however slow the machine.
		otherFinished := make(chan struct{})
		var finishOnce, conflictOnce sync.Once
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultDelay, Key: b.key.String(), Release: release})
		b.fake.OnRequest(func(r stripefake.RequestRecord) {
			switch {
			case r.Executed:
				finishOnce.Do(func() { close(otherFinished) })
			case r.Status == http.StatusConflict:
				conflictOnce.Do(func() {
					close(release)
					select {
					case <-otherFinished:
					case <-time.After(time.Minute): // only if the fake is broken
						t.Errorf("the other request did not finish after its release")
					}
				})
			}
		})
		otherDone := make(chan error, 1)
		go func() {
			_, err := stripeeffect.CreatePromotionCode(b.ctx, b.api, b.key, promoRequest(b.g))
			otherDone <- err
		}()
		require.Eventually(t, func() bool { return b.fake.InFlight() == 1 }, 5*time.Second, time.Millisecond)

		res, err := b.run(t)
		require.NoError(t, err)
		require.NoError(t, <-otherDone)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.GreaterOrEqual(t, res.Calls, 2)
		require.True(t, res.Value.Replayed, "the code is the other request's")
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))

		var conflicts int
		for _, r := range b.fake.Requests(b.key.String()) {
			if r.Status == http.StatusConflict {
				conflicts++
				require.Equal(t, "idempotency_key_in_use", r.ErrorCode)
			}
		}
		require.GreaterOrEqual(t, conflicts, 1)
		requireSameKeyEverywhere(t, b)
	})

	t.Run("Replayed500IsNotRetriedAndTheNextRunFindsTheCode", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// An earlier request under this key (outside the ledger) made the
		// code, then got a 500 that Stripe saved.
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorAfterWrite, Path: "/v1/promotion_codes"})
		_, err := stripeeffect.CreatePromotionCode(b.ctx, b.api, b.key, promoRequest(b.g))
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)

		res, err := b.run(t)
		require.ErrorIs(t, err, idempotency.ErrRetryable, "in doubt: a later run asks Stripe")
		require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
		require.Equal(t, 1, res.Calls, "a replayed 500 is not retried in-run")
		reqs := b.fake.Requests(b.key.String())
		require.Len(t, reqs, 2)
		require.True(t, reqs[1].Replayed)
		require.Equal(t, http.StatusInternalServerError, reqs[1].Status)
		var se *stripe.Error
		require.ErrorAs(t, err, &se)
		require.True(t, stripeeffect.Replayed(se.LastResponse))
		require.Equal(t, []idempotency.Attempt{{At: b.clock.Now(), Generation: 1, Class: idempotency.AttemptUnknown,
			Status: http.StatusInternalServerError, RequestID: reqs[1].RequestID, Replayed: true, Error: res.Attempts[0].Error}},
			res.Attempts)

		creates := b.fake.Calls(stripefake.OpCreate, "")
		again, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeReconciled, again.Outcome)
		require.Zero(t, again.Calls)
		require.Equal(t, b.fake.Objects()[0].ID, again.Value.ID)
		require.Equal(t, creates, b.fake.Calls(stripefake.OpCreate, ""), "found, not sent again")
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
	})

	t.Run("WithoutFindAReplayed500WaitsForAnOperator", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.effect.Find = nil
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorAfterWrite, Path: "/v1/promotion_codes"})
		_, err := stripeeffect.CreatePromotionCode(b.ctx, b.api, b.key, promoRequest(b.g))
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)

		res, err := b.run(t)
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
		require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
		require.Equal(t, 1, res.Calls)

		again, err := b.run(t)
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
		require.Equal(t, idempotency.OutcomeNeedsReconciliation, again.Outcome)
		require.Zero(t, again.Calls)
		require.Len(t, b.fake.Requests(b.key.String()), 2, "a record in doubt must not call Stripe")
		require.Zero(t, b.fake.Calls(stripefake.OpList, ""))
	})

	t.Run("Saved500AfterTheWriteIsNotRetriedAndTheNextRunFindsTheCode", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// Stripe created the code, then failed and saved the 500 with
		// Stripe-Should-Retry: false: retrying gets the 500 back.
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorAfterWrite, Path: "/v1/promotion_codes"})
		res, err := b.run(t)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
		require.Equal(t, 1, res.Calls, "Stripe-Should-Retry: false is not retried in-run")
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode), "why a blind retry under a new key would be wrong")

		again, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeReconciled, again.Outcome)
		require.Zero(t, again.Calls)
		require.Equal(t, b.fake.Objects()[0].ID, again.Value.ID)
		require.Equal(t, 1, b.fake.Calls(stripefake.OpCreate, ""))
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
	})

	t.Run("Fresh500IsUnknownAndRetriedUnderTheSameKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.effect.Retry = &idempotency.RetryPolicy{MaxAttempts: 1}
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Path: "/v1/promotion_codes"})
		res, err := b.run(t)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
		require.Equal(t, idempotency.AttemptUnknown, res.Attempts[0].Class)
		require.Zero(t, b.fake.Created(stripefake.KindPromotionCode))

		res, err = b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.False(t, res.Value.Replayed)
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
		requireSameKeyEverywhere(t, b)
	})

	t.Run("StripeIdempotencyErrorIsAMismatch", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// The key was used outside this ledger with other parameters.
		other := promoRequest(b.g)
		other.Code = "SOMETHINGELSE"
		_, err := stripeeffect.CreatePromotionCode(b.ctx, b.api, b.key, other)
		require.NoError(t, err)

		res, err := b.run(t)
		require.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)
		require.Equal(t, idempotency.OutcomeMismatch, res.Outcome)
		require.Equal(t, 1, res.Calls, "a mismatch is not retried")
		var se *stripe.Error
		require.ErrorAs(t, err, &se)
		require.Equal(t, stripe.ErrorTypeIdempotency, se.Type)
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
	})

	t.Run("ChangedPayloadStopsAtTheLedger", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, err := b.run(t)
		require.NoError(t, err)
		changed := b.g
		changed.Code = "OTHER10"
		res, err := idempotency.Run(b.ctx, b.exec, b.effect, changed)
		var mm *idempotency.MismatchError
		require.ErrorAs(t, err, &mm)
		require.Equal(t, idempotency.OutcomeMismatch, res.Outcome)
		require.Zero(t, res.Calls)
		require.Len(t, b.fake.Requests(b.key.String()), 1)
	})

	t.Run("UnknownCouponIsPermanent", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		eff := stripeeffect.PromotionCodeEffect(b.api, "test.anniversary", grantKey, func(g grant) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{Coupon: "co_missing", Customer: g.Customer}
		})
		res, err := idempotency.Run(b.ctx, b.exec, eff, b.g)
		require.ErrorIs(t, err, idempotency.ErrPermanent)
		require.Equal(t, idempotency.OutcomePermanent, res.Outcome)
		require.Equal(t, 1, res.Calls, "a permanent error is not retried")
		var se *stripe.Error
		require.ErrorAs(t, err, &se)
		require.Equal(t, stripe.ErrorTypeInvalidRequest, se.Type)
		require.Equal(t, stripe.ErrorCodeResourceMissing, se.Code)
		require.Zero(t, b.fake.Created(stripefake.KindPromotionCode))
	})

	t.Run("CrashAfterStripeCreatedTheCodeIsReplayedByTheTakeover", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		var crash atomic.Bool
		crash.Store(true)
		b.effect.OnComplete = func(context.Context, grant, stripeeffect.PromotionCodeResult) error {
			if crash.Load() {
				return errors.New("worker killed before the record")
			}
			return nil
		}
		first, err := b.run(t)
		require.Error(t, err)
		require.Equal(t, idempotency.OutcomeError, first.Outcome)
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
		crash.Store(false)

		// The lease is live: another delivery stops at the claim.
		inflight, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeInFlight, inflight.Outcome)
		require.Len(t, b.fake.Requests(b.key.String()), 1)

		b.advance(lease + time.Second)
		res, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 2, res.Record.Claims)
		require.True(t, res.Value.Replayed)
		require.Equal(t, b.fake.Objects()[0].ID, res.Value.ID)
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
		require.Zero(t, b.fake.Calls(stripefake.OpList, ""), "inside the window the same key settles it")
		requireSameKeyEverywhere(t, b)
	})

	t.Run("WithoutFindACrashPastTheDedupWindowWaitsForAnOperator", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.effect.Find = nil
		b.effect.OnComplete = func(context.Context, grant, stripeeffect.PromotionCodeResult) error {
			return errors.New("worker killed before the record")
		}
		_, err := b.run(t)
		require.Error(t, err)
		b.effect.OnComplete = nil

		b.advance(stripeeffect.DedupWindow + time.Hour)
		before := b.fake.RequestCount()
		res, err := b.run(t)
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
		require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
		require.Zero(t, res.Calls)
		require.Equal(t, before, b.fake.RequestCount(), "Stripe has forgotten the key: calling would create a second code")
		require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
	})

	t.Run("HMACKeysLeaveNoRawIDs", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		keys := idempotency.KeySpace{Namespace: "test.anniversary", Version: 1, Secret: []byte("s3cret")}
		eff := stripeeffect.PromotionCodeEffect(b.api, "test.anniversary",
			func(g grant) (idempotency.Key, error) { return keys.Key(idempotency.Str("user", g.User)) },
			func(g grant) stripeeffect.PromotionCode { return stripeeffect.PromotionCode{Coupon: coupon} })
		res, err := idempotency.Run(b.ctx, b.exec, eff, b.g)
		require.NoError(t, err)
		pc, err := b.api.PromotionCodes.Get(res.Value.ID, nil)
		require.NoError(t, err)
		require.Equal(t, res.Key.String(), pc.Metadata[stripeeffect.MetadataKey])
		require.NotContains(t, pc.Metadata[stripeeffect.MetadataKey], "u_1")
		require.Equal(t, res.Key.String(), b.fake.Objects()[0].IdempotencyKey)
	})
}

// requireEvidence checks one attempt's evidence against the request the
// fake recorded for it (nil when no answer reached the client).
func requireEvidence(t *testing.T, a idempotency.Attempt, gen int, class idempotency.AttemptClass, r *stripefake.RequestRecord) {
	t.Helper()
	require.Equal(t, gen, a.Generation)
	require.Equal(t, class, a.Class)
	if r == nil {
		require.Zero(t, a.Status, "no answer came back")
		require.Empty(t, a.RequestID)
		require.False(t, a.Replayed)
		return
	}
	require.Equal(t, r.Status, a.Status)
	require.Equal(t, r.RequestID, a.RequestID)
	require.NotEmpty(t, a.RequestID)
	require.Equal(t, r.Replayed, a.Replayed)
}

func TestEvidence(t *testing.T) {
	t.Parallel()

	t.Run("EveryAttemptLeavesStripesAnswerInTheRecord", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultLockTimeout, Path: "/v1/promotion_codes"})
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/promotion_codes"})
		res, err := b.run(t)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, 3, res.Calls)

		reqs := b.fake.Requests(b.key.String())
		require.Len(t, reqs, 3)
		require.Equal(t, []int{http.StatusTooManyRequests, 0, http.StatusOK}, []int{reqs[0].Status, reqs[1].Status, reqs[2].Status})
		ev := res.Record.Evidence
		require.Len(t, ev, 3)
		requireEvidence(t, ev[0], 1, idempotency.AttemptNotActed, &reqs[0])
		require.Contains(t, ev[0].Error, "lock_timeout")
		requireEvidence(t, ev[1], 1, idempotency.AttemptUnknown, nil) // the response was lost
		require.NotEmpty(t, ev[1].Error)
		requireEvidence(t, ev[2], 1, idempotency.AttemptDone, &reqs[2])
		require.True(t, ev[2].Replayed, "the code the lost attempt created")
		require.Empty(t, ev[2].Error)
		require.Equal(t, ev, res.Attempts)
	})

	t.Run("ARefusalLeavesItsStatusAndRequestID", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		eff := stripeeffect.PromotionCodeEffect(b.api, "test.anniversary", grantKey, func(g grant) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{Coupon: "co_missing", Customer: g.Customer}
		})
		res, err := idempotency.Run(b.ctx, b.exec, eff, b.g)
		require.ErrorIs(t, err, idempotency.ErrPermanent)
		reqs := b.fake.Requests(b.key.String())
		require.Len(t, reqs, 1)
		require.Equal(t, idempotency.StateFailed, res.Record.State)
		require.Len(t, res.Record.Evidence, 1)
		requireEvidence(t, res.Record.Evidence[0], 1, idempotency.AttemptRefused, &reqs[0])
		require.Equal(t, http.StatusBadRequest, res.Record.Evidence[0].Status)
	})

	t.Run("AFirstSuccessIsNotReplayed", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		res, err := b.run(t)
		require.NoError(t, err)
		reqs := b.fake.Requests(b.key.String())
		require.Len(t, reqs, 1)
		require.Len(t, res.Record.Evidence, 1)
		requireEvidence(t, res.Record.Evidence[0], 1, idempotency.AttemptDone, &reqs[0])
		require.False(t, res.Record.Evidence[0].Replayed)
	})
}

func TestEffectDefaults(t *testing.T) {
	t.Parallel()
	api := stripeeffect.NewAPI("sk_test_x", nil)
	eff := stripeeffect.PromotionCodeEffect(api, "test.anniversary", grantKey, promoRequest)
	require.NoError(t, eff.Validate())
	require.Equal(t, idempotency.ExpiredRetry, eff.Expired)
	require.Equal(t, 24*time.Hour, eff.DedupWindow)
	require.Equal(t, stripeeffect.DefaultRetry, *eff.Retry)
	eff.Retry.MaxAttempts = 9
	require.Equal(t, 3, stripeeffect.DefaultRetry.MaxAttempts, "each effect owns a copy")

	// The fingerprint is the request: another coupon, another fingerprint.
	g := grant{User: "u", Sub: "s", Customer: "cus_1"}
	_, fp1, err := eff.Identity(g)
	require.NoError(t, err)
	_, fp2, err := eff.Identity(g)
	require.NoError(t, err)
	require.Equal(t, fp1, fp2)
	g.Code = "X"
	_, fp3, err := eff.Identity(g)
	require.NoError(t, err)
	require.NotEqual(t, fp1, fp3)

	require.NotNil(t, eff.Find, "a record in doubt is settled by asking Stripe")
	refund := stripeeffect.RefundEffect(api, "test.refund", grantKey, func(grant) stripeeffect.Refund { return stripeeffect.Refund{} })
	credit := stripeeffect.CreditEffect(api, "test.credit", grantKey, func(grant) stripeeffect.Credit { return stripeeffect.Credit{} })
	for _, e := range []struct {
		expired idempotency.ExpiredPolicy
		window  time.Duration
		retry   idempotency.RetryPolicy
		find    bool
	}{
		{refund.Expired, refund.DedupWindow, *refund.Retry, refund.Find != nil},
		{credit.Expired, credit.DedupWindow, *credit.Retry, credit.Find != nil},
	} {
		require.Equal(t, idempotency.ExpiredRetry, e.expired)
		require.Equal(t, stripeeffect.DedupWindow, e.window)
		require.Equal(t, stripeeffect.DefaultRetry, e.retry)
		require.True(t, e.find)
	}

	deact := stripeeffect.DeactivatePromotionCodeEffect(api, "test.revoke", grantKey, func(grant) string { return "promo_1" })
	require.Equal(t, idempotency.ExpiredRetry, deact.Expired)
	require.Zero(t, deact.DedupWindow, "deactivating is safe to repeat")
	require.NotNil(t, deact.Find, "a deactivation in doubt is settled by reading the code")

	require.Panics(t, func() { stripeeffect.PromotionCodeEffect[grant](nil, "x", grantKey, promoRequest) })
	require.Panics(t, func() { stripeeffect.RefundEffect[grant](api, "x", grantKey, nil) })
}

func TestNoRequestWithoutAKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var zero idempotency.Key
	calls := map[string]func() error{
		"CreatePromotionCode": func() error {
			_, err := stripeeffect.CreatePromotionCode(b.ctx, b.api, zero, stripeeffect.PromotionCode{Coupon: coupon})
			return err
		},
		"DeactivatePromotionCode": func() error {
			_, err := stripeeffect.DeactivatePromotionCode(b.ctx, b.api, zero, "promo_000001")
			return err
		},
		"CreateRefund": func() error {
			_, err := stripeeffect.CreateRefund(b.ctx, b.api, zero, stripeeffect.Refund{PaymentIntent: "pi_1", Amount: 100})
			return err
		},
		"CreditBalance": func() error {
			_, err := stripeeffect.CreditBalance(b.ctx, b.api, zero, stripeeffect.Credit{Customer: "cus_1", Amount: 100, Currency: "usd"})
			return err
		},
	}
	for name, call := range calls {
		err := call()
		require.ErrorIs(t, err, stripeeffect.ErrNoKey, name)
		require.ErrorIs(t, err, idempotency.ErrPermanent, name)
	}
	require.Zero(t, b.fake.RequestCount(), "nothing may be sent without a key")
}

func TestInvalidRequestsAreRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for name, call := range map[string]func() error{
		"PromotionCodeWithoutCoupon": func() error {
			_, err := stripeeffect.CreatePromotionCode(b.ctx, b.api, b.key, stripeeffect.PromotionCode{Customer: "cus_1"})
			return err
		},
		"DeactivateWithoutID": func() error {
			_, err := stripeeffect.DeactivatePromotionCode(b.ctx, b.api, b.key, " ")
			return err
		},
		"RefundWithoutPaymentIntent": func() error {
			_, err := stripeeffect.CreateRefund(b.ctx, b.api, b.key, stripeeffect.Refund{Amount: 1})
			return err
		},
		"NegativeRefund": func() error {
			_, err := stripeeffect.CreateRefund(b.ctx, b.api, b.key, stripeeffect.Refund{PaymentIntent: "pi_1", Amount: -1})
			return err
		},
		"CreditWithoutCurrency": func() error {
			_, err := stripeeffect.CreditBalance(b.ctx, b.api, b.key, stripeeffect.Credit{Customer: "cus_1", Amount: 1})
			return err
		},
		"ZeroCredit": func() error {
			_, err := stripeeffect.CreditBalance(b.ctx, b.api, b.key, stripeeffect.Credit{Customer: "cus_1", Currency: "usd"})
			return err
		},
		"NilClient": func() error {
			_, err := stripeeffect.CreatePromotionCode(b.ctx, nil, b.key, stripeeffect.PromotionCode{Coupon: coupon})
			return err
		},
		"UninitialisedClient": func() error {
			_, err := stripeeffect.CreateRefund(b.ctx, &client.API{}, b.key, stripeeffect.Refund{PaymentIntent: "pi_1"})
			return err
		},
	} {
		err := call()
		require.ErrorIs(t, err, stripeeffect.ErrInvalidRequest, name)
		require.ErrorIs(t, err, idempotency.ErrPermanent, name)
	}
	require.Zero(t, b.fake.RequestCount())
}

func TestCallsCarryTheContext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(b.ctx)
	cancel()
	_, err := stripeeffect.CreatePromotionCode(ctx, b.api, b.key, promoRequest(b.g))
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, stripeeffect.ErrNotSent)
	class, _ := idempotency.Classify(err)
	require.Equal(t, idempotency.ClassNotActed, class, "a context done before sending: nothing reached Stripe")
	require.Zero(t, b.fake.RequestCount())
}

func TestRetryAfterReachesTheExecutor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, RetryAfter: 3 * time.Second})
	_, err := stripeeffect.CreatePromotionCode(b.ctx, b.api, b.key, promoRequest(b.g))
	class, after := idempotency.Classify(err)
	require.Equal(t, idempotency.ClassNotActed, class)
	require.Equal(t, 3*time.Second, after)
	require.Len(t, b.fake.Requests(b.key.String()), 1, "NewAPI's client does not retry by itself")
}

// recorder is an http.RoundTripper that records the Idempotency-Key of
// every request it sends.
type recorder struct {
	mu   sync.Mutex
	keys []string
	next http.RoundTripper
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.keys = append(r.keys, req.Header.Get("Idempotency-Key"))
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.keys...)
}

func TestStripeGoOwnRetriesKeepTheKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A client with stripe-go's retries on (its default of 2), without its
	// sleeps, sending through a recorder.
	rec := &recorder{next: http.DefaultTransport}
	cfg := b.fake.BackendConfig()
	cfg.MaxNetworkRetries = stripe.Int64(2)
	cfg.HTTPClient = &http.Client{Transport: rec, Timeout: 10 * time.Second}
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, cfg)
	impl, ok := backend.(*stripe.BackendImplementation)
	require.True(t, ok)
	impl.SetNetworkRetriesSleep(false)
	api := client.New("sk_test_effects", &stripe.Backends{API: backend})

	b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultLockTimeout, Times: 2})
	pc, err := stripeeffect.CreatePromotionCode(b.ctx, api, b.key, promoRequest(b.g))
	require.NoError(t, err)
	require.False(t, stripeeffect.Replayed(pc.LastResponse))
	require.Equal(t, []string{b.key.String(), b.key.String(), b.key.String()}, rec.seen())
	require.Len(t, b.fake.Requests(b.key.String()), 3)
	require.Equal(t, 1, b.fake.Created(stripefake.KindPromotionCode))
}

func TestNewAPIMakesOneRequestPerAttempt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &recorder{next: http.DefaultTransport}
	api := stripeeffect.NewAPI("sk_test_effects", &stripeeffect.APIConfig{
		URL: b.fake.URL(), HTTPClient: &http.Client{Transport: rec, Timeout: 10 * time.Second},
	})
	b.effect = stripeeffect.PromotionCodeEffect(api, "test.anniversary", grantKey, promoRequest)
	b.effect.Retry = &fastRetry
	// 503 and lock_timeout are what stripe-go would retry by itself.
	b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorBeforeWrite, Status: http.StatusServiceUnavailable})
	b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultLockTimeout})
	res, err := b.run(t)
	require.NoError(t, err)
	require.Equal(t, 3, res.Calls)
	require.Equal(t, []string{b.key.String(), b.key.String(), b.key.String()}, rec.seen(),
		"one HTTP request per executor attempt, all under the effect's key")
	requireSameKeyEverywhere(t, b)
}

func TestDeactivatePromotionCodeEffect(t *testing.T) {
	t.Parallel()
	b := setup(t)
	created, err := b.run(t)
	require.NoError(t, err)

	revokeKeys := idempotency.KeySpace{Namespace: "test.revoke", Version: 1}
	revoke := stripeeffect.DeactivatePromotionCodeEffect(b.api, "test.revoke",
		func(id string) (idempotency.Key, error) { return revokeKeys.Key(idempotency.Str("promo", id)) },
		func(id string) string { return id })
	revoke.Retry = &fastRetry
	b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/promotion_codes/*"})
	res, err := idempotency.Run(b.ctx, b.exec, revoke, created.Value.ID)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.False(t, res.Value.Active)
	require.Equal(t, created.Value.ID, res.Value.ID)
	require.True(t, res.Value.Replayed)

	again, err := idempotency.Run(b.ctx, b.exec, revoke, created.Value.ID)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, again.Outcome)

	pc, err := b.api.PromotionCodes.Get(created.Value.ID, nil)
	require.NoError(t, err)
	require.False(t, pc.Active)
	for _, r := range b.fake.AllRequests() {
		if r.Method == http.MethodPost {
			require.NotEmpty(t, r.IdempotencyKey)
		}
	}
	require.Zero(t, b.fake.RequestsWithGeneratedKey())
}

// refundRequest is one refund the business decided to make.
type refundRequest struct {
	ID            string // the refund request's own id: the key
	PaymentIntent string
	Amount        int64
}

var refundKeys = idempotency.KeySpace{Namespace: "test.refund", Version: 1}

func newRefundEffect(api *client.API) *idempotency.Effect[refundRequest, stripeeffect.RefundResult] {
	eff := stripeeffect.RefundEffect(api, "test.refund",
		func(r refundRequest) (idempotency.Key, error) {
			return refundKeys.Key(idempotency.Str("refund_request", r.ID))
		},
		func(r refundRequest) stripeeffect.Refund {
			return stripeeffect.Refund{PaymentIntent: r.PaymentIntent, Amount: r.Amount, Reason: "requested_by_customer",
				Metadata: map[string]string{"refund_request": r.ID}}
		})
	eff.Retry = &fastRetry
	return eff
}

func TestRefundEffect(t *testing.T) {
	t.Parallel()

	t.Run("RefundsOnceDespiteALostResponse", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		eff := newRefundEffect(b.api)
		b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/refunds"})
		in := refundRequest{ID: "rr_1", PaymentIntent: "pi_1", Amount: 1200}
		res, err := idempotency.Run(b.ctx, b.exec, eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.Equal(t, stripeeffect.RefundResult{ID: res.Value.ID, PaymentIntent: "pi_1", Amount: 1200, Currency: "usd",
			Status: "succeeded", Replayed: true}, res.Value)

		again, err := idempotency.Run(b.ctx, b.exec, eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeAlreadyApplied, again.Outcome)
		require.EqualValues(t, 1200, b.fake.Refunded("pi_1"))
		require.Equal(t, 1, b.fake.Created(stripefake.KindRefund))
	})

	t.Run("RefundAboveWhatIsLeftIsPermanent", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		eff := newRefundEffect(b.api)
		res, err := idempotency.Run(b.ctx, b.exec, eff, refundRequest{ID: "rr_big", PaymentIntent: "pi_1", Amount: 9999})
		require.ErrorIs(t, err, idempotency.ErrPermanent)
		require.Equal(t, idempotency.OutcomePermanent, res.Outcome)
		require.Equal(t, 1, res.Calls)
		var se *stripe.Error
		require.ErrorAs(t, err, &se)
		require.Equal(t, stripe.ErrorCodeAmountTooLarge, se.Code)
		require.Zero(t, b.fake.Created(stripefake.KindRefund))
	})

	t.Run("UnknownPaymentIntentIsPermanent", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		eff := newRefundEffect(b.api)
		res, err := idempotency.Run(b.ctx, b.exec, eff, refundRequest{ID: "rr_2", PaymentIntent: "pi_missing", Amount: 10})
		require.ErrorIs(t, err, idempotency.ErrPermanent)
		require.Equal(t, idempotency.OutcomePermanent, res.Outcome)
	})

	t.Run("FullRefundSendsNoAmount", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		eff := newRefundEffect(b.api)
		res, err := idempotency.Run(b.ctx, b.exec, eff, refundRequest{ID: "rr_full", PaymentIntent: "pi_1"})
		require.NoError(t, err)
		require.EqualValues(t, 5000, res.Value.Amount)
	})
}

func TestCreditEffect(t *testing.T) {
	t.Parallel()
	b := setup(t)
	creditKeys := idempotency.KeySpace{Namespace: "test.apology", Version: 1}
	eff := stripeeffect.CreditEffect(b.api, "test.apology",
		func(customer string) (idempotency.Key, error) {
			return creditKeys.Key(idempotency.Str("customer", customer), idempotency.Str("incident", "dup-codes"))
		},
		func(customer string) stripeeffect.Credit {
			return stripeeffect.Credit{Customer: customer, Amount: 1500, Currency: "usd", Description: "One month on us"}
		})
	eff.Retry = &fastRetry
	b.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/customers/*/balance_transactions"})

	res, err := idempotency.Run(b.ctx, b.exec, eff, "cus_42")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, stripeeffect.CreditResult{ID: res.Value.ID, Customer: "cus_42", Amount: 1500, Currency: "usd",
		EndingBalance: -1500, Replayed: true}, res.Value)
	again, err := idempotency.Run(b.ctx, b.exec, eff, "cus_42")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, again.Outcome)
	require.EqualValues(t, -1500, b.fake.CustomerBalance("cus_42"), "credited once, as a negative amount")
	require.Equal(t, 1, b.fake.Created(stripefake.KindCustomerBalanceTransaction))
}
