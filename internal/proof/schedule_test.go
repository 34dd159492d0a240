package proof

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The durable retry schedule: what a run learns about when to try again
// outlives the run.

// TestRetryAfterIsRememberedAcrossSweeps: Stripe answers 429 with
// Retry-After: 60. The claim is released with a due time 60 s on; a sweep
// 10 s later makes no call and reports the key not due; a sweep 61 s after
// the refusal makes the one call.
func TestRetryAfterIsRememberedAcrossSweeps(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "ira60", Customer: "cus_ra60"}
	key := keyOf(in.ID)
	r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, Path: promoPath, Key: key, RetryAfter: 60 * time.Second})
	eff := r.effect(attempts(3), 0) // 60 s is past MaxBackoff: not waited for in-run
	tick := func() sweep.Report {
		rep, err := sweep.Run(r.ctx, r.exec, eff, sweep.Slice([]intent{in}), nil)
		require.NoError(t, err)
		return rep
	}
	rep := tick()
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeRetryable])
	require.Equal(t, 1, rep.ProviderCalls)
	recs, err := r.store.Lookup(r.ctx, []string{key})
	require.NoError(t, err)
	require.Equal(t, idempotency.StateReleased, recs[key].State)
	require.True(t, r.clock.Now().Add(60*time.Second).Equal(recs[key].DueAt), "due 60 s on, as Stripe asked: %v", recs[key].DueAt)

	r.clock.Advance(10 * time.Second)
	rep = tick()
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeNotDue], "reported not due")
	require.Zero(t, rep.ProviderCalls)
	require.Equal(t, 1, rep.SavedByPreflight, "settled by the pre-flight, no claim")

	r.clock.Advance(51 * time.Second)
	rep = tick()
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 1, rep.ProviderCalls)
	require.Equal(t, []string{"429 rate_limit", "200 executed"}, requestSummary(r.fake, key))
	requireOnePerKey(t, r.fake, key)
}

type creditIntent struct {
	User     string
	Customer string
	Currency string
}

// TestARefusalIsRememberedUntilThePayloadChanges: a nightly referral credit
// in USD to a customer whose balance is in EUR. Night 1 makes one call,
// refused; nights 2 and 3 make none (the Stripe effects remember a refusal
// with the same payload); the corrected payload (EUR) is sent at once and
// applied.
func TestARefusalIsRememberedUntilThePayloadChanges(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	api := stripeeffect.NewAPI("sk_test_proof", &stripeeffect.APIConfig{URL: r.fake.URL()})
	keys := idempotency.KeySpace{Namespace: "proof.referral"}
	// The customer's balance already holds euros.
	_, err := stripeeffect.CreditBalance(r.ctx, api, keys.MustKey(idempotency.Str("seed", "eur")),
		stripeeffect.Credit{Customer: "cus_eur", Amount: 100, Currency: "eur", Description: "earlier credit"})
	require.NoError(t, err)

	eff := stripeeffect.CreditEffect(api, "proof.referral",
		func(c creditIntent) (idempotency.Key, error) { return keys.Key(idempotency.Str("user", c.User)) },
		func(c creditIntent) stripeeffect.Credit {
			return stripeeffect.Credit{Customer: c.Customer, Amount: 500, Currency: c.Currency, Description: "referral"}
		})
	require.Equal(t, stripeeffect.RefusalMemory, eff.RememberRefusal, "on by default for the Stripe effects")
	night := func(c creditIntent) sweep.Report {
		before := r.fake.Calls(stripefake.OpCreate, stripefake.KindCustomerBalanceTransaction)
		rep, err := sweep.Run(r.ctx, r.exec, eff, sweep.Slice([]creditIntent{c}), nil)
		require.NoError(t, err)
		rep.ProviderCalls = r.fake.Calls(stripefake.OpCreate, stripefake.KindCustomerBalanceTransaction) - before
		r.clock.Advance(24 * time.Hour)
		r.fake.Advance(24 * time.Hour)
		return rep
	}
	usd := creditIntent{User: "u_ref", Customer: "cus_eur", Currency: "usd"}
	rep := night(usd)
	require.Equal(t, 1, rep.ProviderCalls, "night 1: one call")
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomePermanent], "refused: currency mismatch")
	require.Len(t, rep.Failures, 1)
	for n := 2; n <= 3; n++ {
		rep = night(usd)
		require.Zero(t, rep.ProviderCalls, "night %d: the same refusal is not sent again", n)
		require.Equal(t, 1, rep.RefusalsRemembered, "night %d", n)
		require.Empty(t, rep.Failures, "night %d: reported on night 1", n)
	}
	eur := usd
	eur.Currency = "eur"
	rep = night(eur)
	require.Equal(t, 1, rep.ProviderCalls, "the corrected payload is sent at once")
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 2, r.fake.Created(stripefake.KindCustomerBalanceTransaction), "the seed and the corrected credit")
}
