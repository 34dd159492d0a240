package affpostback

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type fixture struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	net   *network
	clock *clocktest.Clock
	p     *Program
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, Migrate(ctx, pool))
	clock := clocktest.New()
	net := newNetwork(t)
	p, err := New(Config{DB: pool, URL: net.url(), Now: clock.Now})
	require.NoError(t, err)
	return &fixture{ctx: ctx, pool: pool, net: net, clock: clock, p: p}
}

// convert adds a conversion paying cents and returns it.
func (f *fixture) convert(t *testing.T, id string, cents int64) Conversion {
	t.Helper()
	c := Conversion{ID: id, ClickID: "clk_" + id, PayoutCents: cents, Currency: "USD"}
	_, err := f.pool.Exec(f.ctx, `INSERT INTO conversions (id, click_id, payout_cents, currency, converted_at) VALUES ($1, $2, $3, $4, $5)`,
		c.ID, c.ClickID, c.PayoutCents, c.Currency, f.clock.Now())
	require.NoError(t, err)
	return c
}

type postback struct {
	Conversion string
	Status     string
	HTTPStatus int // 0: NULL
}

func (f *fixture) postbacks(t *testing.T) []postback {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT conversion_id, status, coalesce(http_status, 0) FROM postbacks ORDER BY conversion_id, id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[postback])
	require.NoError(t, err)
	return out
}

// record returns the ledger's active record for c.
func (f *fixture) record(t *testing.T, c Conversion) (idempotency.Record, bool) {
	t.Helper()
	key, err := Key(c)
	require.NoError(t, err)
	recs, err := f.p.Executor().Store().Lookup(f.ctx, []string{key.String()})
	require.NoError(t, err)
	rec, ok := recs[key.String()]
	return rec, ok
}

func (f *fixture) stuck(t *testing.T) []idempotency.Record {
	t.Helper()
	op, ok := f.p.Executor().Store().(idempotency.Operator)
	require.True(t, ok, "pgguard's store is an Operator")
	recs, err := op.ListStuck(f.ctx, idempotency.ListStuckRequest{Namespace: Keys.Namespace})
	require.NoError(t, err)
	return recs
}

func TestConcurrentDeliveriesOfOneConversionHitTheNetworkOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.convert(t, "cv1", 1234)

	// The first delivery to reach the network is held there until the 19
	// others have returned, so they all overlap it.
	entered, release := f.net.HoldNext()
	results := make(chan idempotency.Outcome, 20)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := f.p.Deliver(f.ctx, "cv1")
			if err != nil {
				t.Errorf("deliver: %v", err)
			}
			results <- res.Outcome
		}()
	}
	<-entered
	counts := map[idempotency.Outcome]int{}
	for range 19 {
		counts[<-results]++
	}
	release()
	wg.Wait()
	counts[<-results]++
	require.Equal(t, map[idempotency.Outcome]int{idempotency.OutcomeApplied: 1, idempotency.OutcomeInFlight: 19}, counts)

	res, err := f.p.Deliver(f.ctx, "cv1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Zero(t, res.Calls)
	require.Equal(t, http.StatusOK, res.Value.Status, "the stored answer")

	require.Equal(t, 1, f.net.Requests(), "21 deliveries, one postback")
	q := f.net.lastQuery("cv1")
	require.Equal(t, "42", q.Get("offer"))
	require.Equal(t, "clk_cv1", q.Get("click_id"))
	require.Equal(t, "12.34", q.Get("amount"))
	require.Equal(t, []postback{{"cv1", "delivered", 200}}, f.postbacks(t))
}

func TestWorkerThatDiedBeforeCallingIsTakenOver(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cv := f.convert(t, "cv1", 500)

	// A worker claims exactly as the executor would, then dies before
	// calling (it never marked the call started).
	key, fp, err := f.p.Effect().Identity(cv)
	require.NoError(t, err)
	dead, err := f.p.Executor().Store().Claim(f.ctx, idempotency.ClaimRequest{
		Key: key.String(), Namespace: key.Namespace(), Fingerprint: fp,
		Lease: Lease, Track: true,
	})
	require.NoError(t, err)
	require.True(t, dead.Verdict.Holds())
	require.Equal(t, idempotency.StateClaimed, dead.Record.State)

	// While its lease is live, a tick leaves it alone.
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeInFlight])
	require.Zero(t, f.net.Requests())

	// After the lease: taken over, since the call never started.
	f.clock.Advance(Lease + time.Second)
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 1, f.net.hitsFor("cv1"))
	require.Equal(t, []postback{{"cv1", "delivered", 200}}, f.postbacks(t))
	rec, ok := f.record(t, cv)
	require.True(t, ok)
	require.Equal(t, idempotency.StateApplied, rec.State)
	require.Equal(t, 2, rec.Claims, "the dead worker's claim, then the takeover")

	// The dead worker, waking up, can no longer touch the record.
	_, err = f.p.Executor().Store().Transition(f.ctx, idempotency.Release(key.String(), dead.Record.Token, "woke up", 0))
	require.ErrorIs(t, err, idempotency.ErrClaimLost)
}

func TestWorkerThatDiedAfterCallingIsParkedForReconciliation(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cv1 := f.convert(t, "cv1", 500)
	f.convert(t, "cv2", 700)
	f.p.beforeRecord = func(c Conversion) error {
		if c.ID == "cv1" {
			return errors.New("worker killed after the network answered")
		}
		return nil
	}
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeError])
	require.Equal(t, 1, f.net.hitsFor("cv1"), "the network counted cv1")
	require.Equal(t, []postback{{"cv2", "delivered", 200}}, f.postbacks(t), "the crash lost cv1's row")
	f.p.beforeRecord = nil

	// Once the lease has expired, the claim is not taken over: its call
	// had started. Every tick reports it, and no request is sent.
	f.clock.Advance(Lease + time.Second)
	for range 2 {
		rep, err = f.p.Tick(f.ctx)
		require.NoError(t, err)
		require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeNeedsReconciliation])
		require.Zero(t, rep.ProviderCalls)
		require.Len(t, rep.Failures, 1)
		require.ErrorIs(t, rep.Failures[0].Err, idempotency.ErrNeedsReconciliation)
	}
	res, err := f.p.Deliver(f.ctx, "cv1")
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Zero(t, res.Calls)
	require.Equal(t, 1, f.net.hitsFor("cv1"), "still one hit")

	stuck := f.stuck(t)
	require.Len(t, stuck, 1)
	key, _ := Key(cv1)
	require.Equal(t, key.String(), stuck[0].Key)
	require.Equal(t, idempotency.StateCalling, stuck[0].State, "its call had started")

	// Someone checks the network's report (it counted cv1) and settles.
	require.NoError(t, f.p.Settle(f.ctx, "cv1", stuck[0], true, "in the network's report"))
	require.Equal(t, []postback{{"cv1", "delivered", 0}, {"cv2", "delivered", 200}}, f.postbacks(t))
	require.Empty(t, f.stuck(t))
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)
	require.Equal(t, 2, f.net.Requests())
}

func TestNotDeliveredSettlementFiresAgain(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.convert(t, "cv1", 500)
	f.net.Answer("cv1", http.StatusBadGateway) // the network's proxy failed: did it count it?
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeNeedsReconciliation])
	stuck := f.stuck(t)
	require.Len(t, stuck, 1)
	require.Equal(t, idempotency.StateInDoubt, stuck[0].State)

	// The network's report does not have it: settle as not delivered.
	require.NoError(t, f.p.Settle(f.ctx, "cv1", stuck[0], false, "not in the network's report"))
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 2, f.net.hitsFor("cv1"), "the 502 and the postback fired after settling")
	require.Equal(t, []postback{{"cv1", "delivered", 200}}, f.postbacks(t))
}

func TestNetworkAnswers(t *testing.T) {
	t.Parallel()
	t.Run("503IsRetriedInTheSameRun", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		cv := f.convert(t, "cv1", 500)
		f.net.Answer("cv1", http.StatusServiceUnavailable)
		rep, err := f.p.Tick(f.ctx)
		require.NoError(t, err)
		require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied], "a 503 says nothing happened: safe to retry at once, even here")
		require.Equal(t, 2, rep.ProviderCalls)
		require.Equal(t, 2, f.net.hitsFor("cv1"), "the 503 and the success")
		require.Equal(t, []postback{{"cv1", "delivered", 200}}, f.postbacks(t))
		rec, ok := f.record(t, cv)
		require.True(t, ok)
		require.Len(t, rec.Evidence, 2)
		require.Equal(t, idempotency.AttemptNotActed, rec.Evidence[0].Class)
		require.Equal(t, http.StatusServiceUnavailable, rec.Evidence[0].Status)
		require.Equal(t, idempotency.AttemptDone, rec.Evidence[1].Class)
	})
	t.Run("503sUntilTheRunGivesUpAreRetriedByTheNextTick", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		cv := f.convert(t, "cv1", 500)
		f.net.Answer("cv1", http.StatusServiceUnavailable, http.StatusServiceUnavailable, http.StatusServiceUnavailable)
		rep, err := f.p.Tick(f.ctx)
		require.NoError(t, err)
		require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeRetryable])
		require.Empty(t, f.postbacks(t))
		rec, ok := f.record(t, cv)
		require.True(t, ok)
		require.Equal(t, idempotency.StateReleased, rec.State, "nothing happened: free for the next claim, once due")
		require.False(t, rec.DueAt.IsZero(), "after a run that gave up, the key backs off")

		rep, err = f.p.Tick(f.ctx)
		require.NoError(t, err)
		require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeNotDue], "an immediate tick does not hammer the network")
		require.Equal(t, 3, f.net.hitsFor("cv1"))

		f.clock.Advance(3 * time.Second) // past the 2 s backoff and its jitter
		rep, err = f.p.Tick(f.ctx)
		require.NoError(t, err)
		require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
		require.Equal(t, 4, f.net.hitsFor("cv1"), "three 503s and the success")
		require.Equal(t, []postback{{"cv1", "delivered", 200}}, f.postbacks(t))
	})
	t.Run("500IsParked", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.convert(t, "cv1", 500)
		f.net.Answer("cv1", http.StatusInternalServerError)
		for range 2 {
			rep, err := f.p.Tick(f.ctx)
			require.NoError(t, err)
			require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeNeedsReconciliation])
		}
		require.Equal(t, 1, f.net.hitsFor("cv1"), "the network may have counted it: never retried blindly")
		require.Empty(t, f.postbacks(t))
		require.Len(t, f.stuck(t), 1)
	})
	t.Run("4xxIsRecordedAsARefusal", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		cv := f.convert(t, "cv1", 500)
		f.net.Answer("cv1", http.StatusBadRequest) // unknown click id
		rep, err := f.p.Tick(f.ctx)
		require.NoError(t, err)
		require.Equal(t, 1, rep.Outcomes[idempotency.OutcomePermanent])
		require.Equal(t, []postback{{"cv1", "failed", 400}}, f.postbacks(t))
		_, active := f.record(t, cv)
		require.False(t, active, "the ledger record is failed, which frees the key")

		rep, err = f.p.Tick(f.ctx)
		require.NoError(t, err)
		require.Zero(t, rep.Candidates, "the failed row keeps cv1 out of later ticks")
		require.Equal(t, 1, f.net.hitsFor("cv1"))
	})
}

func TestDeliveriesAndOverlappingTicksFireEachConversionOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	const n = 25
	for i := range n {
		f.convert(t, fmt.Sprintf("cv%02d", i), int64(100*i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2+n)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.p.Tick(f.ctx)
			errs <- err
		}()
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.p.Deliver(f.ctx, fmt.Sprintf("cv%02d", i))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	// Whatever a tick saw in flight, a last one finishes.
	_, err := f.p.Tick(f.ctx)
	require.NoError(t, err)

	require.Equal(t, n, f.net.Requests())
	for i := range n {
		require.Equal(t, 1, f.net.hitsFor(fmt.Sprintf("cv%02d", i)))
	}
	require.Len(t, f.postbacks(t), n)
}
