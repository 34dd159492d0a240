package payout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
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
	prov  *payoutsProvider
	clock *clocktest.Clock
	p     *Program
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, Migrate(ctx, pool))
	clock := clocktest.New()
	prov := newPayoutsProvider(t, clock.Now)
	p, err := New(Config{DB: pool, BaseURL: prov.url(), APIKey: apiKey, Now: clock.Now, Sleep: clock.Sleep})
	require.NoError(t, err)
	return &fixture{ctx: ctx, pool: pool, prov: prov, clock: clock, p: p}
}

func (f *fixture) request(t *testing.T, id, recipient string, cents int64) Request {
	t.Helper()
	r := Request{ID: id, Recipient: recipient, AmountCents: cents, Currency: "USD"}
	_, err := f.pool.Exec(f.ctx, `INSERT INTO payout_requests (id, recipient, amount_cents, currency) VALUES ($1, $2, $3, $4)`,
		r.ID, r.Recipient, r.AmountCents, r.Currency)
	require.NoError(t, err)
	return r
}

type transferRow struct {
	Payout              string
	Status              string
	TransferID          string
	ClientTransactionID string
	Reference           string
}

func (f *fixture) rows(t *testing.T) []transferRow {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT payout_id, status, coalesce(transfer_id, ''),
		coalesce(client_transaction_id::text, ''), reference::text FROM payout_transfers ORDER BY payout_id, id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[transferRow])
	require.NoError(t, err)
	return out
}

func (f *fixture) record(t *testing.T, payoutID string) idempotency.Record {
	t.Helper()
	key := keyOf(payoutID)
	recs, err := f.p.Executor().Store().Lookup(f.ctx, []string{key.String()})
	require.NoError(t, err)
	rec, ok := recs[key.String()]
	require.True(t, ok, "no active record for %s", payoutID)
	return rec
}

func keyOf(payoutID string) idempotency.Key { return Keys.MustKey(idempotency.Str("payout", payoutID)) }

func TestTransferCarriesTheUUIDOfTheKey(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.request(t, "po_123", "acct_alice", 12_500)

	res, err := f.p.Pay(f.ctx, "po_123")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	posts := f.prov.postsReceived()
	require.Len(t, posts, 1)
	// The value pinned by the core (idempotency's ExampleKey_UUID): a
	// deterministic version-5 UUID of the key, the same on every delivery.
	// (The provider refuses anything but a UUID, such as key.String().)
	const pinned = "1051d040-d493-5107-a258-4cc9bdf5ff16"
	require.Equal(t, pinned, keyOf("po_123").UUID())
	require.Equal(t, pinned, posts[0].ClientTransactionID)
	require.Equal(t, pinned, posts[0].Reference, "generation 1: the reference is the same UUID")
	require.Equal(t, []transferRow{{"po_123", "sent", "tr_001", pinned, pinned}}, f.rows(t))

	// Delivered again: answered from the ledger, no request.
	res, err = f.p.Pay(f.ctx, "po_123")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Zero(t, res.Calls)
	require.Equal(t, "tr_001", res.Value.ID)
	require.Len(t, f.prov.postsReceived(), 1)
	require.Equal(t, 1, f.prov.Effects())
}

// The provider makes the transfer and the answer is lost on the way back.
// The in-run retry sends the same UUID and gets the first transfer back:
// exactly one transfer.
func TestLostResponseGetsTheOriginalTransferBack(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.request(t, "po_1", "acct_alice", 50_000)
	f.prov.LoseNext() // the transfer is made, the answer lost

	res, err := f.p.Pay(f.ctx, "po_1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, 2, res.Calls)
	require.Len(t, res.Attempts, 2)
	require.Equal(t, idempotency.AttemptUnknown, res.Attempts[0].Class, "the first answer was lost")
	require.Equal(t, idempotency.AttemptDone, res.Attempts[1].Class)
	require.True(t, res.Attempts[1].Replayed, "the provider replayed the first transfer")

	require.Equal(t, 1, f.prov.Effects(), "one transfer")
	posts := f.prov.postsReceived()
	require.Len(t, posts, 2)
	uuid := keyOf("po_1").UUID()
	require.Equal(t, uuid, posts[0].ClientTransactionID)
	require.Equal(t, uuid, posts[1].ClientTransactionID, "the retry carries the same UUID")
	require.Equal(t, 1, f.prov.Replays())
	require.Equal(t, "tr_001", res.Value.ID, "the original transfer")
	require.Equal(t, []transferRow{{"po_1", "sent", "tr_001", uuid, uuid}}, f.rows(t))
}

func TestOverlappingTicksMakeOneTransferPerRequest(t *testing.T) {
	t.Parallel()
	f := setup(t)
	const n = 20
	for i := range n {
		f.request(t, fmt.Sprintf("po_%02d", i), fmt.Sprintf("acct_%02d", i), int64(1000+i))
	}
	var (
		wg    sync.WaitGroup
		calls atomic.Int64
		errs  = make([]error, 3)
	)
	for i := range errs {
		wg.Go(func() {
			rep, err := f.p.Tick(f.ctx)
			calls.Add(int64(rep.ProviderCalls))
			errs[i] = err
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	// Whatever a tick saw in flight, the next one finds done.
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)

	require.Equal(t, n, f.prov.Effects(), "transfers really made")
	require.EqualValues(t, n, calls.Load(), "the claim stops the other ticks before the provider")
	require.Len(t, f.rows(t), n)
	for i := range n {
		require.Len(t, f.prov.transfersTo(fmt.Sprintf("acct_%02d", i)), 1)
	}
}

// The provider saved a 500 under the first UUID and will repeat it for
// ever (hazard 13). The record is parked; the next delivery asks the
// provider (Find), which has nothing, and sends again under generation 2:
// a new UUID, the same reference.
func TestSavedFailureIsSentAgainUnderANewGeneration(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.request(t, "po_1", "acct_alice", 50_000)
	key := keyOf("po_1")
	f.prov.FailAndRemember(key.UUID(), http.StatusInternalServerError) // a saved 500, no transfer

	res, err := f.p.Pay(f.ctx, "po_1")
	require.ErrorIs(t, err, idempotency.ErrRetryable)
	require.Equal(t, idempotency.OutcomeRetryable, res.Outcome)
	require.Equal(t, 2, res.Calls, "a 500, then its replay")
	require.True(t, res.Attempts[1].Replayed)
	require.Equal(t, idempotency.StateInDoubt, f.record(t, "po_1").State)
	require.Zero(t, f.prov.Effects())

	res, err = f.p.Pay(f.ctx, "po_1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.True(t, res.Reconciled, "Find was asked first")
	require.Equal(t, 1, res.Calls)
	require.EqualValues(t, 1, f.prov.lists.Load())

	gen2 := key.WithGeneration(2).UUID()
	require.NotEqual(t, key.UUID(), gen2)
	require.Equal(t, 1, f.prov.Effects())
	tr := f.prov.allTransfers()[0]
	require.Equal(t, gen2, tr.ClientTransactionID, "sent under the second generation's UUID")
	require.Equal(t, key.UUID(), tr.Reference, "the reference stays the business key's UUID")
	require.Equal(t, []transferRow{{"po_1", "sent", tr.ID, gen2, key.UUID()}}, f.rows(t))
	require.Equal(t, 2, f.record(t, "po_1").Generation)
}

// A worker dies after the provider made a transfer under generation 2 and
// the next delivery comes after the provider forgot that UUID. Find lists
// by reference, the UUID of the business key, so it finds the transfer and
// records it: no second payment. (A Find by client_transaction_id, with the
// UUID of key.Base(), would find nothing, and the next generation would pay
// again.)
func TestFindSeesATransferMadeUnderALaterGeneration(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.request(t, "po_1", "acct_alice", 50_000)
	key := keyOf("po_1")
	f.prov.FailAndRemember(key.UUID(), http.StatusInternalServerError)
	_, err := f.p.Pay(f.ctx, "po_1")
	require.ErrorIs(t, err, idempotency.ErrRetryable)

	f.p.beforeRecord = func(Request) error { return errors.New("worker killed after the transfer") }
	res, err := f.p.Pay(f.ctx, "po_1")
	require.Error(t, err)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	require.Equal(t, 1, f.prov.Effects(), "generation 2 made the transfer")
	f.p.beforeRecord = nil

	// The deliveries stopped for longer than the provider's memory.
	f.clock.Advance(DedupWindow + Lease)
	gen2 := key.WithGeneration(2).UUID()
	require.False(t, f.prov.Remembers(gen2), "a retry under the same UUID would pay again")
	for _, tr := range f.prov.allTransfers() {
		require.NotEqual(t, key.UUID(), tr.ClientTransactionID, "nothing carries the base key's UUID as its transaction id")
	}

	res, err = f.p.Pay(f.ctx, "po_1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
	require.Zero(t, res.Calls)
	require.Equal(t, gen2, res.Value.ClientTransactionID)
	require.Equal(t, 1, f.prov.Effects(), "no second payment")
	require.Equal(t, []transferRow{{"po_1", "sent", res.Value.ID, gen2, key.UUID()}}, f.rows(t))
}

// A crash after the transfer, redelivered inside the dead worker's lease:
// nobody calls. Redelivered past the provider's window: a retry under the
// same UUID would pay again, so the record is reconciled with Find.
func TestCrashPastTheWindowIsFoundNotPaidTwice(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.request(t, "po_1", "acct_alice", 50_000)
	f.p.beforeRecord = func(Request) error { return errors.New("worker killed after the transfer") }
	res, err := f.p.Pay(f.ctx, "po_1")
	require.Error(t, err)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	f.p.beforeRecord = nil
	require.Equal(t, 1, f.prov.Effects())
	require.Empty(t, f.rows(t), "the crash lost the row")

	res, err = f.p.Pay(f.ctx, "po_1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeInFlight, res.Outcome)
	require.Zero(t, res.Calls)

	f.clock.Advance(DedupWindow + time.Hour)
	require.False(t, f.prov.Remembers(keyOf("po_1").UUID()))
	res, err = f.p.Pay(f.ctx, "po_1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
	require.Zero(t, res.Calls)
	require.Equal(t, 1, f.prov.Effects(), "no second payment")
	require.Len(t, f.prov.postsReceived(), 1)
	uuid := keyOf("po_1").UUID()
	require.Equal(t, []transferRow{{"po_1", "sent", "tr_001", uuid, uuid}}, f.rows(t))
}

func TestRefusedRecipientIsRecordedFailed(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.request(t, "po_1", "acct_closed", 50_000)
	f.request(t, "po_2", "acct_bob", 7_000)
	f.prov.rejectRecipient("acct_closed")

	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomePermanent])
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 1, f.prov.Effects())
	rows := f.rows(t)
	require.Len(t, rows, 2)
	require.Equal(t, "failed", rows[0].Status)
	require.Equal(t, "sent", rows[1].Status)

	// The next tick leaves both alone.
	posts := len(f.prov.postsReceived())
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)
	require.Len(t, f.prov.postsReceived(), posts)
}
