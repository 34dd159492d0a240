package stripeeffect_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The acceptance scenarios of issue 15: records whose outcome nobody saw,
// settled on PostgreSQL through pgguard's ledger, with the real stripe-go
// client against the fake Stripe over loopback. The fake counts what it
// created, every creating POST and every list call, so each scenario
// asserts what happened at Stripe, not only what the executor said.

func TestMain(m *testing.M) { pgtest.Main(m) }

// nextNight is a nightly job's next run: past Stripe's 24 hours of memory
// of a key, so a retry under the same key could act a second time.
const nextNight = 24*time.Hour + 5*time.Minute

// ledgerWorld is one scenario's world: pgguard's ledger on the test's own
// schema, an executor, and a fake Stripe, all on one fake clock. The
// executor's waits between in-run attempts move that clock instead of
// sleeping, and are kept in slept.
type ledgerWorld struct {
	ctx   context.Context
	clock *clocktest.Clock
	fake  *stripefake.Server
	api   *client.API
	store *pgguard.Store
	exec  *idempotency.Executor

	mu    sync.Mutex
	slept []time.Duration
}

func newLedgerWorld(t *testing.T) *ledgerWorld {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	clock := clocktest.New()
	store, err := pgguard.New(pool, &pgguard.Config{Now: clock.Now})
	require.NoError(t, err)
	fake := stripefake.New()
	t.Cleanup(fake.Close)
	fake.SetNow(clock.Now())
	fake.AddCoupon(coupon, 10)
	fake.AddPaymentIntent("pi_1", 5000, "usd")
	w := &ledgerWorld{ctx: ctx, clock: clock, fake: fake, store: store,
		api: stripeeffect.NewAPI("sk_test_reconcile", &stripeeffect.APIConfig{URL: fake.URL()})}
	w.exec, err = idempotency.NewExecutor(store, &idempotency.Config{Now: clock.Now, Sleep: w.sleep})
	require.NoError(t, err)
	return w
}

func (w *ledgerWorld) sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.mu.Lock()
	w.slept = append(w.slept, d)
	w.mu.Unlock()
	w.tick(d)
	return nil
}

func (w *ledgerWorld) waits() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.slept)
}

// tick moves the ledger's clock and Stripe's together.
func (w *ledgerWorld) tick(d time.Duration) {
	w.clock.Advance(d)
	w.fake.Advance(d)
}

// record returns the key's active record.
func (w *ledgerWorld) record(t *testing.T, key idempotency.Key) idempotency.Record {
	t.Helper()
	recs, err := w.store.Lookup(w.ctx, []string{key.String()})
	require.NoError(t, err)
	rec, ok := recs[key.String()]
	require.True(t, ok, "no active record for %s", key)
	return rec
}

// stuck returns what an operator would be shown: the records nobody will
// finish on their own.
func (w *ledgerWorld) stuck(t *testing.T) []idempotency.Record {
	t.Helper()
	var op idempotency.Operator = w.store
	recs, err := op.ListStuck(w.ctx, idempotency.ListStuckRequest{})
	require.NoError(t, err)
	return recs
}

// creates and lists count the creating POSTs and the list calls the fake
// has seen.
func (w *ledgerWorld) creates() int { return w.fake.Calls(stripefake.OpCreate, "") }
func (w *ledgerWorld) lists() int   { return w.fake.Calls(stripefake.OpList, "") }

// updates returns the updating POSTs the fake has seen (a promotion code's
// deactivation), in order.
func (w *ledgerWorld) updates() []stripefake.RequestRecord {
	var out []stripefake.RequestRecord
	for _, r := range w.fake.AllRequests() {
		if r.Op == stripefake.OpUpdate {
			out = append(out, r)
		}
	}
	return out
}

// requireAlreadyApplied runs eff once more: the ledger answers with want,
// and nothing is sent to Stripe.
func requireAlreadyApplied[In, Out any](t *testing.T, w *ledgerWorld, eff *idempotency.Effect[In, Out], in In, want Out) {
	t.Helper()
	before := w.fake.RequestCount()
	res, err := idempotency.Run(w.ctx, w.exec, eff, in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Zero(t, res.Calls)
	require.Equal(t, want, res.Value)
	require.Equal(t, before, w.fake.RequestCount(), "a repeat must not reach Stripe")
}

func TestUnknownOutcomesOnPostgres(t *testing.T) {
	t.Parallel()

	t.Run("ANightOfRateLimitsIsAppliedTheNextNightWithOneCode", func(t *testing.T) {
		t.Parallel()
		w := newLedgerWorld(t)
		eff := stripeeffect.PromotionCodeEffect(w.api, "test.anniversary", grantKey, promoRequest) // DefaultRetry
		g := grant{User: "u_1", Sub: "sub_1", Customer: "cus_1"}
		key := mustGrantKey(t, g)

		w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultRateLimit, Path: "/v1/promotion_codes", Times: -1})
		night1, err := idempotency.Run(w.ctx, w.exec, eff, g)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, idempotency.OutcomeRetryable, night1.Outcome)
		require.Equal(t, stripeeffect.DefaultRetry.MaxAttempts, night1.Calls)
		require.Equal(t, []time.Duration{time.Second, time.Second}, w.waits(), "Retry-After, then the longer of it and the backoff")
		refused := w.fake.Requests(key.String())
		require.Len(t, refused, 3)
		for i, r := range refused {
			require.Equal(t, http.StatusTooManyRequests, r.Status, "attempt %d", i+1)
			require.Equal(t, "rate_limit", r.ErrorCode, "attempt %d", i+1)
		}
		rec := w.record(t, key)
		require.Equal(t, idempotency.StateReleased, rec.State, "a 429 proves Stripe did nothing")
		require.Len(t, rec.Evidence, 3)
		for i, a := range rec.Evidence {
			requireEvidence(t, a, 1, idempotency.AttemptNotActed, &refused[i])
		}
		require.Empty(t, w.stuck(t))
		require.Zero(t, w.fake.Created(stripefake.KindPromotionCode))

		w.fake.ClearFaults()
		w.tick(nextNight)
		night2, err := idempotency.Run(w.ctx, w.exec, eff, g)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, night2.Outcome)
		require.Equal(t, 1, night2.Calls)
		require.False(t, night2.Value.Replayed)
		require.Equal(t, 1, w.fake.Created(stripefake.KindPromotionCode))
		require.Equal(t, 4, w.creates(), "three refused, one that created the code")
		require.Zero(t, w.lists(), "nothing was in doubt: no lookup")
		require.Len(t, w.fake.Requests(key.String()), 4, "every POST under the business key")
		require.Len(t, night2.Record.Evidence, 4)
		requireEvidence(t, night2.Record.Evidence[3], 1, idempotency.AttemptDone, &w.fake.Requests(key.String())[3])
		require.Empty(t, w.stuck(t))
		requireAlreadyApplied(t, w, eff, g, night2.Value)
	})

	t.Run("AWorkerThatDiedAfterStripeCreatedTheCodeIsReconciledFromStripe", func(t *testing.T) {
		t.Parallel()
		w := newLedgerWorld(t)
		eff := stripeeffect.PromotionCodeEffect(w.api, "test.anniversary", grantKey, promoRequest)
		g := grant{User: "u_1", Sub: "sub_1", Customer: "cus_1"}
		key := mustGrantKey(t, g)
		var died atomic.Bool
		died.Store(true)
		var recorded []string // the domain rows the completion wrote
		eff.OnComplete = func(_ context.Context, _ grant, out stripeeffect.PromotionCodeResult) error {
			if died.Load() {
				return errors.New("worker died before recording the code")
			}
			recorded = append(recorded, out.ID)
			return nil
		}

		first, err := idempotency.Run(w.ctx, w.exec, eff, g)
		require.Error(t, err)
		require.Equal(t, idempotency.OutcomeError, first.Outcome)
		require.Equal(t, 1, w.fake.Created(stripefake.KindPromotionCode))
		code := w.fake.Objects()[0]
		require.Equal(t, idempotency.StateCalling, w.record(t, key).State)
		died.Store(false)

		w.tick(nextNight)
		creates, lists := w.creates(), w.lists()
		res, err := idempotency.Run(w.ctx, w.exec, eff, g)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
		require.True(t, res.Reconciled)
		require.Zero(t, res.Calls)
		require.Equal(t, code.ID, res.Value.ID)
		require.Equal(t, idempotency.StateApplied, res.Record.State)
		require.Equal(t, creates, w.creates(), "no creating POST on this tick")
		require.Equal(t, lists+1, w.lists(), "one list call")
		require.Equal(t, 1, w.fake.Created(stripefake.KindPromotionCode))
		require.Equal(t, []string{code.ID}, recorded, "the completion recorded the code found")
		require.Empty(t, w.stuck(t))
		requireAlreadyApplied(t, w, eff, g, res.Value)
	})

	t.Run("AReplayed500WithNothingCreatedIsSentAgainUnderASecondGeneration", func(t *testing.T) {
		t.Parallel()
		w := newLedgerWorld(t)
		eff := stripeeffect.PromotionCodeEffect(w.api, "test.anniversary", grantKey, promoRequest)
		g := grant{User: "u_1", Sub: "sub_1", Customer: "cus_1"}
		key := mustGrantKey(t, g)

		// Stripe began executing, failed before writing, and saved the 500:
		// every request under this key gets it back.
		w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorSavedBeforeWrite, Path: "/v1/promotion_codes"})
		first, err := idempotency.Run(w.ctx, w.exec, eff, g)
		require.ErrorIs(t, err, idempotency.ErrRetryable, "in doubt: the next run asks Stripe")
		require.Equal(t, idempotency.OutcomeRetryable, first.Outcome)
		require.Equal(t, 1, first.Calls, "a saved 500 is not retried under its key")
		require.Zero(t, w.fake.Created(stripefake.KindPromotionCode))
		require.Equal(t, idempotency.StateInDoubt, w.record(t, key).State)
		stuck := w.stuck(t)
		require.Len(t, stuck, 1, "in doubt until a run asks Stripe")
		require.Equal(t, key.String(), stuck[0].Key)

		w.tick(30 * time.Minute) // the next tick
		creates, lists := w.creates(), w.lists()
		res, err := idempotency.Run(w.ctx, w.exec, eff, g)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.True(t, res.Reconciled, "asked Stripe first")
		require.Equal(t, 1, res.Calls)
		require.Equal(t, lists+1, w.lists(), "one list call found nothing")
		require.Equal(t, creates+1, w.creates(), "one creating POST")
		require.Equal(t, 1, w.fake.Created(stripefake.KindPromotionCode))

		var posts []stripefake.RequestRecord
		for _, r := range w.fake.AllRequests() {
			if r.Method == http.MethodPost {
				posts = append(posts, r)
			}
		}
		require.Len(t, posts, 2)
		require.Equal(t, key.String(), posts[0].IdempotencyKey)
		require.Equal(t, key.String()+"~g2", posts[1].IdempotencyKey)
		require.Equal(t, key.WithGeneration(2).String(), posts[1].IdempotencyKey)

		require.Equal(t, 2, res.Record.Generation)
		ev := res.Record.Evidence
		require.Len(t, ev, 2, "the 500 and the success")
		requireEvidence(t, ev[0], 1, idempotency.AttemptUnknown, &posts[0])
		require.Equal(t, http.StatusInternalServerError, ev[0].Status)
		requireEvidence(t, ev[1], 2, idempotency.AttemptDone, &posts[1])

		pc, err := w.api.PromotionCodes.Get(res.Value.ID, nil)
		require.NoError(t, err)
		require.Equal(t, key.String(), pc.Metadata[stripeeffect.MetadataKey], "the metadata keeps the business key")
		require.Empty(t, w.stuck(t))
		requireAlreadyApplied(t, w, eff, g, res.Value)
	})

	t.Run("ARefundWhoseResponseWasLostIsFoundThroughThePaymentIntent", func(t *testing.T) {
		t.Parallel()
		w := newLedgerWorld(t)
		eff := newRefundEffect(w.api)
		in := refundRequest{ID: "rr_1", PaymentIntent: "pi_1", Amount: 1200}
		key, _, err := eff.Identity(in)
		require.NoError(t, err)

		w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/refunds", Times: -1})
		first, err := idempotency.Run(w.ctx, w.exec, eff, in)
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, idempotency.OutcomeRetryable, first.Outcome)
		require.Equal(t, fastRetry.MaxAttempts, first.Calls, "every answer lost")
		require.Equal(t, 1, w.fake.Created(stripefake.KindRefund))
		require.Equal(t, idempotency.StateUnknown, w.record(t, key).State)
		refund := w.fake.Objects()[0]
		w.fake.ClearFaults()

		w.tick(nextNight) // Stripe has forgotten the key: a retry under it would refund again
		creates, lists := w.creates(), w.fake.Calls(stripefake.OpList, stripefake.KindRefund)
		res, err := idempotency.Run(w.ctx, w.exec, eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
		require.Zero(t, res.Calls)
		require.Equal(t, stripeeffect.RefundResult{ID: refund.ID, PaymentIntent: "pi_1", Amount: 1200, Currency: "usd",
			Status: "succeeded"}, res.Value)
		require.Equal(t, creates, w.creates(), "no creating POST on this tick")
		require.Equal(t, lists+1, w.fake.Calls(stripefake.OpList, stripefake.KindRefund), "one list of the payment intent's refunds")
		require.Equal(t, 1, w.fake.Created(stripefake.KindRefund))
		require.EqualValues(t, 1200, w.fake.Refunded("pi_1"))
		require.Empty(t, w.stuck(t))
		requireAlreadyApplied(t, w, eff, in, res.Value)
	})

	t.Run("ACreditWhoseResponseWasLostIsFoundInTheCustomersBalance", func(t *testing.T) {
		t.Parallel()
		w := newLedgerWorld(t)
		creditKeys := idempotency.KeySpace{Namespace: "test.apology", Version: 1}
		eff := stripeeffect.CreditEffect(w.api, "test.apology",
			func(customer string) (idempotency.Key, error) {
				return creditKeys.Key(idempotency.Str("customer", customer), idempotency.Str("incident", "dup-codes"))
			},
			func(customer string) stripeeffect.Credit {
				return stripeeffect.Credit{Customer: customer, Amount: 1500, Currency: "usd", Description: "One month on us"}
			})
		eff.Retry = &fastRetry
		key, _, err := eff.Identity("cus_42")
		require.NoError(t, err)

		w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultResponseLost, Path: "/v1/customers/*/balance_transactions", Times: -1})
		first, err := idempotency.Run(w.ctx, w.exec, eff, "cus_42")
		require.ErrorIs(t, err, idempotency.ErrRetryable)
		require.Equal(t, fastRetry.MaxAttempts, first.Calls, "every answer lost")
		require.Equal(t, 1, w.fake.Created(stripefake.KindCustomerBalanceTransaction))
		require.Equal(t, idempotency.StateUnknown, w.record(t, key).State)
		credit := w.fake.Objects()[0]
		w.fake.ClearFaults()

		w.tick(nextNight)
		creates, lists := w.creates(), w.fake.Calls(stripefake.OpList, stripefake.KindCustomerBalanceTransaction)
		res, err := idempotency.Run(w.ctx, w.exec, eff, "cus_42")
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
		require.Zero(t, res.Calls)
		require.Equal(t, stripeeffect.CreditResult{ID: credit.ID, Customer: "cus_42", Amount: 1500, Currency: "usd",
			EndingBalance: -1500}, res.Value)
		require.Equal(t, creates, w.creates(), "no creating POST on this tick")
		require.Equal(t, lists+1, w.fake.Calls(stripefake.OpList, stripefake.KindCustomerBalanceTransaction),
			"one list of the customer's balance transactions")
		require.Equal(t, 1, w.fake.Created(stripefake.KindCustomerBalanceTransaction))
		require.EqualValues(t, -1500, w.fake.CustomerBalance("cus_42"), "credited once")
		require.Empty(t, w.stuck(t))
		requireAlreadyApplied(t, w, eff, "cus_42", res.Value)
	})
}

// A lookup that raced a request still executing could miss the object the
// request is about to create, and send it again. A run that meets a live
// holder is in flight: it neither asks Stripe nor sends.
func TestARunMeetingALiveHolderIsInFlightAndDoesNotAskStripe(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// reconciler: the holder is a run that asked Stripe about a
		// record in doubt, found nothing and sent again under generation
		// 2 (its own list call is the only one).
		reconciler bool
		hold       stripefake.FaultKind
	}{
		{"HeldBeforeStripeExecutes", false, stripefake.FaultDelay},
		{"HeldAfterStripeCreatedTheCode", false, stripefake.FaultDelayAfterWrite},
		{"AReconcilersResendHeld", true, stripefake.FaultDelay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newLedgerWorld(t)
			eff := stripeeffect.PromotionCodeEffect(w.api, "test.anniversary", grantKey, promoRequest)
			g := grant{User: "u_1", Sub: "sub_1", Customer: "cus_1"}
			key := mustGrantKey(t, g)
			heldKey, lists := key, 0
			if tc.reconciler {
				w.fake.InjectFault(stripefake.Fault{Kind: stripefake.FaultServerErrorSavedBeforeWrite, Path: "/v1/promotion_codes"})
				_, err := idempotency.Run(w.ctx, w.exec, eff, g)
				require.ErrorIs(t, err, idempotency.ErrRetryable)
				require.Equal(t, idempotency.StateInDoubt, w.record(t, key).State)
				w.tick(30 * time.Minute)
				heldKey, lists = key.WithGeneration(2), 1
			}
			creates := w.creates()

			release := make(chan struct{})
			w.fake.InjectFault(stripefake.Fault{Kind: tc.hold, Path: "/v1/promotion_codes", Key: heldKey.String(), Release: release})
			type outcome struct {
				res idempotency.Result[stripeeffect.PromotionCodeResult]
				err error
			}
			holder := make(chan outcome, 1)
			go func() {
				res, err := idempotency.Run(w.ctx, w.exec, eff, g)
				holder <- outcome{res, err}
			}()
			require.Eventually(t, func() bool { return w.fake.InFlight() == 1 }, 30*time.Second, time.Millisecond,
				"the holder's POST did not reach Stripe")

			w.tick(4 * time.Minute) // later, inside the holder's 5 minute lease
			second, err := idempotency.Run(w.ctx, w.exec, eff, g)
			require.NoError(t, err)
			require.Equal(t, idempotency.OutcomeInFlight, second.Outcome)
			require.False(t, second.Reconciled)
			require.Zero(t, second.Calls)
			require.Positive(t, second.Delay, "retry after the holder's lease")
			require.Equal(t, lists, w.lists(), "no lookup under a live claim")
			require.Equal(t, 1, w.fake.InFlight())

			close(release)
			held := <-holder
			require.NoError(t, held.err)
			require.Equal(t, idempotency.OutcomeApplied, held.res.Outcome)
			require.Equal(t, tc.reconciler, held.res.Reconciled)
			require.Equal(t, 1, held.res.Calls)
			require.Equal(t, creates+1, w.creates(), "one creating POST in all: the holder's")
			require.Equal(t, lists, w.lists())
			require.Equal(t, 1, w.fake.Created(stripefake.KindPromotionCode))
			require.Equal(t, heldKey.String(), w.fake.Objects()[0].IdempotencyKey)
			require.Empty(t, w.stuck(t))
			requireAlreadyApplied(t, w, eff, g, held.res.Value)
		})
	}
}

// TestADeactivationInDoubtIsSettledByReadingTheCode: a deactivation whose
// answer was a saved 500 (Stripe hands the same 500 back under that key, so
// a retry under it proves nothing) is settled on the next run by reading
// the code: inactive is recorded with no second POST; still active is sent
// again under the second key generation, once.
func TestADeactivationInDoubtIsSettledByReadingTheCode(t *testing.T) {
	t.Parallel()
	revokeKeys := idempotency.KeySpace{Namespace: "test.revoke", Version: 1}
	// inDoubt builds a world with one promotion code, deactivates it
	// through the effect while fault answers with a saved 500, checks that
	// the record is left in doubt after one POST, and moves to the next
	// tick.
	inDoubt := func(t *testing.T, fault stripefake.FaultKind) (*ledgerWorld, *idempotency.Effect[string, stripeeffect.PromotionCodeResult], string, idempotency.Key) {
		t.Helper()
		w := newLedgerWorld(t)
		eff := stripeeffect.DeactivatePromotionCodeEffect(w.api, "test.revoke",
			func(id string) (idempotency.Key, error) { return revokeKeys.Key(idempotency.Str("promo", id)) },
			func(id string) string { return id })
		g := grant{User: "u_1", Sub: "sub_1", Customer: "cus_1"}
		pc, err := stripeeffect.CreatePromotionCode(w.ctx, w.api, mustGrantKey(t, g), promoRequest(g))
		require.NoError(t, err)
		require.True(t, pc.Active)
		key, _, err := eff.Identity(pc.ID)
		require.NoError(t, err)

		w.fake.InjectFault(stripefake.Fault{Kind: fault, Path: "/v1/promotion_codes/*"})
		first, err := idempotency.Run(w.ctx, w.exec, eff, pc.ID)
		require.ErrorIs(t, err, idempotency.ErrRetryable, "in doubt: the next run asks Stripe")
		require.Equal(t, idempotency.OutcomeRetryable, first.Outcome)
		require.Equal(t, 1, first.Calls, "a saved 500 is not retried under its key")
		require.Equal(t, idempotency.StateInDoubt, w.record(t, key).State)
		require.Len(t, w.updates(), 1)
		w.tick(30 * time.Minute)
		return w, eff, pc.ID, key
	}

	t.Run("DeactivatedThenA500IsFoundInactive", func(t *testing.T) {
		t.Parallel()
		w, eff, id, _ := inDoubt(t, stripefake.FaultServerErrorAfterWrite) // Stripe deactivated the code first
		retrieves := w.fake.Calls(stripefake.OpRetrieve, "")
		res, err := idempotency.Run(w.ctx, w.exec, eff, id)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
		require.Zero(t, res.Calls)
		require.Equal(t, id, res.Value.ID)
		require.False(t, res.Value.Active)
		require.Equal(t, retrieves+1, w.fake.Calls(stripefake.OpRetrieve, ""), "one read of the code")
		require.Len(t, w.updates(), 1, "no second deactivation")
		require.Equal(t, idempotency.StateApplied, res.Record.State)
		require.Empty(t, w.stuck(t))
		requireAlreadyApplied(t, w, eff, id, res.Value)
	})

	t.Run("A500BeforeAnyWriteIsSentAgainUnderTheSecondGeneration", func(t *testing.T) {
		t.Parallel()
		w, eff, id, key := inDoubt(t, stripefake.FaultServerErrorSavedBeforeWrite) // nothing written
		pc, err := w.api.PromotionCodes.Get(id, nil)
		require.NoError(t, err)
		require.True(t, pc.Active, "nothing was written")

		res, err := idempotency.Run(w.ctx, w.exec, eff, id)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		require.True(t, res.Reconciled, "asked Stripe first")
		require.Equal(t, 1, res.Calls)
		require.False(t, res.Value.Active)
		ups := w.updates()
		require.Len(t, ups, 2)
		require.Equal(t, key.String(), ups[0].IdempotencyKey)
		require.Equal(t, key.WithGeneration(2).String(), ups[1].IdempotencyKey)
		pc, err = w.api.PromotionCodes.Get(id, nil)
		require.NoError(t, err)
		require.False(t, pc.Active)
		require.Empty(t, w.stuck(t))
		requireAlreadyApplied(t, w, eff, id, res.Value)
	})
}
