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
// code, the ledger row stays held (calling) under a lease that will expire.
func crashAfterStripe(t *testing.T, r *rig, in intent, mods ...func(*idempotency.Effect[intent, promoResult])) ledgerRow {
	t.Helper()
	eff := r.effect(attempts(1), 0)
	for _, m := range mods {
		m(eff)
	}
	eff.OnComplete = func(context.Context, intent, promoResult) error { return errDomainRow }
	res, err := r.run(eff, in)
	require.ErrorIs(t, err, errDomainRow)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	key := keyOf(in.ID)
	objectOf(t, r.fake, key) // Stripe created the code
	lr := r.row(key)
	require.Equal(t, "calling", lr.State)
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
	require.Equal(t, 2, r.requireApplied(key).Claims)
	t.Logf("crash after Stripe, rerun 23h later: taken over, replayed; 1 object, %d POSTs", posts)
}

// TestPastDedupWindowFindSettlesIt: 25 h after the crash Stripe has
// forgotten the key, so a retry under it could create a second code. The
// next run does not retry: it asks Stripe (the effect's Find lists the
// customer's codes and matches the key the adapter put in the metadata),
// finds the code and records it. No creating POST on that tick, one code
// in all, nothing left for an operator.
func TestPastDedupWindowFindSettlesIt(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "iwin25f", Customer: "cus_win25f"}
	key := keyOf(in.ID)
	crashAfterStripe(t, r, in)
	r.clock.Advance(25 * time.Hour)
	r.fake.Advance(25 * time.Hour)
	created := objectOf(t, r.fake, key)
	postsBefore := r.fake.Calls(stripefake.OpCreate, "")

	eff := r.effect(attempts(3), 0)
	require.NotNil(t, eff.Find, "the Stripe effects can ask Stripe")
	res, err := r.run(eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
	require.True(t, res.Reconciled)
	require.Equal(t, created.ID, res.Value.ID, "the code Stripe had created")
	require.Zero(t, res.Calls)
	require.Equal(t, postsBefore, r.fake.Calls(stripefake.OpCreate, ""), "no creating POST on the reconciling tick")
	require.Positive(t, r.fake.Calls(stripefake.OpList, stripefake.KindPromotionCode), "Find listed the customer's codes")
	require.Empty(t, r.stuckKeys(), "nothing for an operator")
	res, err = r.run(eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	posts := requireOnePerKey(t, r.fake, key)
	r.requireApplied(key)
	t.Logf("crash after Stripe, rerun 25h later: reconciled by Find to %s; 1 object, %d POST", created.ID, posts)
}

// TestPastDedupWindowWithoutFindNeedsAnOperator: the same crash and the
// same 25 h for an effect that cannot ask the provider (no Find). The next
// run does not retry: NeedsReconciliation, no request reaches Stripe,
// ListStuck lists the record. An operator finds the code at Stripe and
// settles the record; the next run returns AlreadyApplied with the settled
// result.
func TestPastDedupWindowWithoutFindNeedsAnOperator(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "iwin25", Customer: "cus_win25"}
	key := keyOf(in.ID)
	crashed := crashAfterStripe(t, r, in)
	r.clock.Advance(25 * time.Hour)
	r.fake.Advance(25 * time.Hour)

	eff := r.effect(attempts(3), 0)
	eff.Find = nil
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
	require.Equal(t, "calling", lr.State)
	require.Equal(t, crashed.Token, lr.Token, "not taken over")
	require.Equal(t, 1, lr.Claims)
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
	t.Logf("crash after Stripe, rerun 25h later without Find: NeedsReconciliation with 0 calls, listed stuck, settled to %s; 1 object, %d POST", id, posts)
}

// TestPastDedupWindowWithoutCheckDuplicates is the control: the same crash
// and the same 25 h for an effect with the window check off (ExpiredRetry,
// DedupWindow 0, from its first claim on) and no Find. The takeover calls
// Stripe under the same key, Stripe no longer knows it, and a second code
// is created. This is the hazard the window prevents.
func TestPastDedupWindowWithoutCheckDuplicates(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "iwin25c", Customer: "cus_win25c"}
	key := keyOf(in.ID)
	noWindow := func(e *idempotency.Effect[intent, promoResult]) { e.DedupWindow, e.Find = 0, nil }
	crashAfterStripe(t, r, in, noWindow)
	r.clock.Advance(25 * time.Hour)
	r.fake.Advance(25 * time.Hour)

	eff := r.effect(attempts(1), 0)
	noWindow(eff)
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

// TestLostResponsePastDedupWindow: the response was lost after Stripe
// created the code (the outcome is unknown; the claim is released for a
// retry under the same key), then nothing for 25 h: Stripe forgot the key.
// Without Find the next run must not retry and the record is listed for an
// operator; with Find the next run finds the code and records it.
func TestLostResponsePastDedupWindow(t *testing.T) {
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
	require.Equal(t, "unknown", lr.State, "the outcome is unknown; a retry under the same key is safe inside the window")

	r.clock.Advance(25 * time.Hour)
	r.fake.Advance(25 * time.Hour)
	blind := r.effect(attempts(1), 0)
	blind.Find = nil
	res, err = r.run(blind, in)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
	require.Zero(t, res.Calls)
	require.Len(t, r.fake.Requests(key), 1, "no call reached Stripe past the window")
	require.Equal(t, 1, r.row(key).Claims, "not taken over")
	require.Equal(t, []string{key}, r.stuckKeys(), "an unknown record past the window is listed for an operator")

	res, err = r.run(eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeReconciled, res.Outcome, "Find settles it")
	require.Equal(t, objectOf(t, r.fake, key).ID, res.Value.ID)
	require.Empty(t, r.stuckKeys())
	requireOnePerKey(t, r.fake, key)
	r.requireApplied(key)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}
