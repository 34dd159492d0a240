package proof

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The provider's dedup window: Stripe remembers a key for 24 hours. A claim
// left pending by a worker that died after Stripe acted is safe to retry
// under the same key inside the window (Stripe replays) and unsafe past it
// (Stripe executes again). Both clocks are moved by hand: the ledger's
// (pgguard.Config.Now) and the fake Stripe's (Server.Advance).

var errDomainRow = errors.New("proof: the process died before recording (simulated)")

// crashAfterStripe runs in once with a completion that fails, as if the
// worker died between Stripe's answer and the record: Stripe created the
// code, the ledger row stays pending under a lease that will expire.
func crashAfterStripe(t *testing.T, r *rig, in intent) ledgerRow {
	t.Helper()
	eff := r.effect(attempts(1), 0)
	eff.OnComplete = func(context.Context, any, intent, promoResult) error { return errDomainRow }
	res, err := r.run(eff, in)
	require.ErrorIs(t, err, errDomainRow)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	key := keyOf(in.ID)
	objectOf(t, r.fake, key) // Stripe created the code
	lr := r.row(key)
	require.Equal(t, "pending", lr.Status)
	require.True(t, lr.Leased, "the dead worker's lease still runs")
	require.Nil(t, lr.Result)
	return lr
}

// TestInsideDedupWindowTakeoverReplays: 23 h after the crash (past the
// lease, inside Stripe's window) the next run takes the claim over and
// Stripe replays the code it created: one object.
func TestInsideDedupWindowTakeoverReplays(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "iwin23", Customer: "cus_win23"}
	key := keyOf(in.ID)
	crashAfterStripe(t, r, in)
	r.clock.Advance(23 * time.Hour)
	r.fake.Advance(23 * time.Hour)

	res, err := r.run(r.effect(attempts(1), 0), in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.True(t, res.Value.Replayed)
	require.Equal(t, []string{"200 executed", "200 replayed"}, requestSummary(r.fake, key))
	posts := requireOnePerKey(t, r.fake, key)
	require.Equal(t, 2, r.requireApplied(key).Attempts)
	t.Logf("crash after Stripe, rerun 23h later: taken over, replayed; 1 object, %d POSTs", posts)
}

// TestPastDedupWindowNeedsReconciliation: 25 h after the crash Stripe has
// forgotten the key. The next run does not retry: NeedsReconciliation, no
// request reaches Stripe, ListStuck lists the record. An operator finds
// the code at Stripe (listing the customer's promotion codes, matching the
// idempotency key the adapter put in the metadata) and settles the record;
// the next run returns AlreadyApplied with the settled result.
func TestPastDedupWindowNeedsReconciliation(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "iwin25", Customer: "cus_win25"}
	key := keyOf(in.ID)
	crashed := crashAfterStripe(t, r, in)
	r.clock.Advance(25 * time.Hour)
	r.fake.Advance(25 * time.Hour)

	eff := r.effect(attempts(3), 0)
	require.Equal(t, idempotency.ExpiredRetry, eff.Expired)
	require.Equal(t, stripeeffect.DedupWindow, eff.DedupWindow)
	for range 2 {
		res, err := r.run(eff, in)
		require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
		require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
		require.Zero(t, res.Calls)
	}
	require.Len(t, r.fake.Requests(key), 1, "no call reached Stripe past the window")
	lr := r.row(key)
	require.Equal(t, "pending", lr.Status)
	require.Equal(t, crashed.Token, lr.Token, "not taken over")
	require.Equal(t, 1, lr.Attempts)
	require.Equal(t, []string{key}, r.stuckKeys(), "ListStuck lists the record")

	id := r.settleFromStripe(key, in.Customer)
	res, err := r.run(eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Equal(t, id, res.Value.ID, "the settled result")
	require.Zero(t, res.Calls)
	require.Empty(t, r.stuckKeys())
	posts := requireOnePerKey(t, r.fake, key)
	r.requireApplied(key)
	t.Logf("crash after Stripe, rerun 25h later: NeedsReconciliation with 0 calls, listed stuck, settled to %s; 1 object, %d POST", id, posts)
}

// TestPastDedupWindowWithoutCheckDuplicates is the control: the same crash
// and the same 25 h, with the window check off (ExpiredRetry, DedupWindow
// 0). The takeover calls Stripe under the same key, Stripe no longer knows
// it, and a second code is created. This is the hazard the window prevents.
func TestPastDedupWindowWithoutCheckDuplicates(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "iwin25c", Customer: "cus_win25c"}
	key := keyOf(in.ID)
	crashAfterStripe(t, r, in)
	r.clock.Advance(25 * time.Hour)
	r.fake.Advance(25 * time.Hour)

	eff := r.effect(attempts(1), 0)
	eff.DedupWindow = 0
	res, err := r.run(eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.False(t, res.Value.Replayed, "Stripe forgot the key and executed again")
	require.Equal(t, 2, r.fake.Created(stripefake.KindPromotionCode), "the duplicate the window check prevents")
	require.Equal(t, []string{"200 executed", "200 executed"}, requestSummary(r.fake, key))
	for _, o := range r.fake.Objects() {
		require.Equal(t, key, o.IdempotencyKey, "both codes were created under the same key")
	}
	t.Logf("control without the window check: %d objects for 1 intent", r.fake.Created(stripefake.KindPromotionCode))
}

// TestReleasedPastDedupWindowIsListedStuck: a claim released after an
// ambiguous failure (the response was lost after Stripe created the code),
// then nothing for 25 h. The next run must not retry (Stripe forgot the
// key), and the operator must be able to find the record with ListStuck.
func TestReleasedPastDedupWindowIsListedStuck(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "iwinrel", Customer: "cus_winrel"}
	key := keyOf(in.ID)
	r.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: promoPath, Key: key})
	eff := r.effect(attempts(1), 0)
	res, err := r.run(eff, in)
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
	require.Equal(t, 1, r.fake.Created(stripefake.KindPromotionCode))
	lr := r.row(key)
	require.Equal(t, "pending", lr.Status)
	require.False(t, lr.Leased, "released")

	r.clock.Advance(25 * time.Hour)
	r.fake.Advance(25 * time.Hour)
	res, err = r.run(eff, in)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
	require.Zero(t, res.Calls)
	require.Len(t, r.fake.Requests(key), 1, "no call reached Stripe past the window")
	require.Equal(t, 1, r.fake.Created(stripefake.KindPromotionCode))

	lr = r.row(key)
	require.Equal(t, "pending", lr.Status)
	require.Equal(t, 1, lr.Attempts, "not taken over")

	// The operator's tool for such records is ListStuck, given the
	// provider's window: a released claim past it is listed.
	listed := r.stuckKeysWithin(stripeeffect.DedupWindow)
	require.Equal(t, []string{key}, listed, "a record the executor reports as needing reconciliation must be listed by ListStuck")
	r.settleFromStripe(key, in.Customer)
	res, err = r.run(eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	requireOnePerKey(t, r.fake, key)
	r.requireApplied(key)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}
