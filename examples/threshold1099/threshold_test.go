package threshold1099

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// est is New York's offset in December and January: the tax time zone.
var est = time.FixedZone("EST", -5*60*60)

type fixture struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	mail  *mailProvider
	clock *clocktest.Clock
	p     *Program
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, Migrate(ctx, pool))
	clock := clocktest.New()
	mail := newMailProvider(t, clock.Now)
	p, err := New(Config{DB: pool, Endpoint: mail.endpoint(), APIKey: apiKey, From: "tax@payouts.example", Now: clock.Now})
	require.NoError(t, err)
	return &fixture{ctx: ctx, pool: pool, mail: mail, clock: clock, p: p}
}

// payee adds a payee; an empty email means none on file.
func (f *fixture) payee(t *testing.T, id, email string) {
	t.Helper()
	_, err := f.pool.Exec(f.ctx, `INSERT INTO payees (id, name, email) VALUES ($1, $2, NULLIF($3, ''))`, id, "Payee "+id, email)
	require.NoError(t, err)
}

func (f *fixture) pay(t *testing.T, payee string, cents int64, at time.Time) {
	t.Helper()
	_, err := f.pool.Exec(f.ctx, `INSERT INTO payouts (payee_id, amount_cents, paid_at) VALUES ($1, $2, $3)`, payee, cents, at)
	require.NoError(t, err)
}

type notice struct {
	Payee     string
	Year      int64
	Status    string
	MessageID string
	Total     int64
}

func (f *fixture) notices(t *testing.T) []notice {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT payee_id, tax_year, status, coalesce(message_id, ''), year_total_cents
		FROM threshold_notices ORDER BY payee_id, tax_year, id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[notice])
	require.NoError(t, err)
	return out
}

func date(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 12, 0, 0, 0, est) }

func TestCrossingTheThresholdTwiceInAYearSendsOneNotice(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.payee(t, "alice", "alice@example.com")
	f.payee(t, "bob", "bob@example.com")
	f.payee(t, "carol", "carol@example.com")
	f.payee(t, "dave", "") // no address on file
	f.pay(t, "alice", 30000, date(2025, 3, 1))
	f.pay(t, "alice", 35000, date(2025, 7, 1)) // $650: crosses
	f.pay(t, "bob", 59999, date(2025, 5, 1))   // $599.99: below
	f.pay(t, "carol", 60000, date(2025, 9, 1)) // exactly $600: crosses
	f.pay(t, "dave", 70000, date(2025, 2, 1))

	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 3, rep.Candidates)
	require.Equal(t, 2, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeSkipped])
	require.Equal(t, 2, f.mail.Effects(), "alice and carol emailed; dave has no address")
	require.Equal(t, []notice{
		{"alice", 2025, "sent", f.mail.onlyIDTo(t, "alice@example.com"), 65000},
		{"carol", 2025, "sent", f.mail.onlyIDTo(t, "carol@example.com"), 60000},
		{"dave", 2025, "skipped", "", 70000},
	}, f.notices(t))

	// Alice crosses again ($1,050); bob reaches exactly $600.
	f.pay(t, "alice", 40000, date(2025, 10, 1))
	f.pay(t, "bob", 1, date(2025, 11, 1))
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Candidates, "only bob: alice, carol and dave hold an active notice for 2025")
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 3, f.mail.Effects())
	require.Len(t, f.mail.sentTo("alice@example.com"), 1)
	require.Len(t, f.mail.sentTo("bob@example.com"), 1)

	// Fed alice again with her new total (a buggy candidate query), the
	// ledger's pre-flight stops her before the provider: the total is not
	// part of the fingerprint, so this is a repeat, not a mismatch.
	requests := f.mail.Requests()
	rep, err = sweep.Run(f.ctx, f.p.Executor(), f.p.Effect(), sweep.Slice([]Candidate{
		{PayeeID: "alice", TaxYear: 2025, Name: "Payee alice", Email: "alice@example.com", YearTotalCents: 105000},
	}), nil)
	require.NoError(t, err)
	require.Equal(t, 1, rep.SavedByPreflight)
	require.Zero(t, rep.ProviderCalls)
	after := f.mail.Requests()
	require.Equal(t, requests, after, "no request reached the provider")
	require.Len(t, f.notices(t), 4)
}

func TestNewTaxYearSendsANewNotice(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.payee(t, "alice", "alice@example.com")
	f.pay(t, "alice", 70000, date(2025, 4, 1))
	_, err := f.p.Tick(f.ctx)
	require.NoError(t, err)

	f.pay(t, "alice", 25000, date(2026, 2, 1))
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates, "$250 in 2026 is below the threshold")

	f.pay(t, "alice", 40000, date(2026, 6, 1))
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])

	sent := f.mail.sentTo("alice@example.com")
	require.Len(t, sent, 2, "one notice per tax year")
	require.Equal(t, "tax1099.threshold:v1:payee=alice/tax_year#2025", sent[0].Key)
	require.Equal(t, "tax1099.threshold:v1:payee=alice/tax_year#2026", sent[1].Key)
	require.Contains(t, sent[1].Subject, "2026")
	require.Equal(t, []notice{
		{"alice", 2025, "sent", "msg_001", 70000},
		{"alice", 2026, "sent", "msg_002", 65000},
	}, f.notices(t))
}

// A tick at 23:59 on December 31 and one at 00:01 on January 1 (New York
// time), each seeing the payouts made up to its instant, agree on the key:
// the year is read from the payouts, not from the clock. The first is still
// sending when the second runs, and the second stops at the claim.
func TestYearEndTicksAgreeOnTheKey(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.payee(t, "alice", "alice@example.com")
	f.pay(t, "alice", 50000, date(2025, 6, 1))
	// 03:00 UTC on January 1 is 22:00 on December 31 in New York: tax year
	// 2025. Read in UTC, alice would have $500 in 2025 and no notice.
	f.pay(t, "alice", 10000, time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC))
	var year int64
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT tax_year FROM payouts WHERE paid_at = '2026-01-01 03:00Z'`).Scan(&year))
	require.EqualValues(t, 2025, year)

	// Dec 31 23:59: the data as of that instant.
	dec31, err := f.p.Candidates(f.ctx)
	require.NoError(t, err)
	require.Len(t, dec31, 1)
	entered, release := f.mail.HoldNext()
	var lateRep sweep.Report
	var lateErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		lateRep, lateErr = f.p.Tick(f.ctx)
	}()
	<-entered // the December tick's email is at the provider

	// Jan 1 00:01: a new payout at 00:00:30 belongs to 2026.
	f.pay(t, "alice", 5000, time.Date(2026, 1, 1, 0, 0, 30, 0, est))
	jan1, err := f.p.Candidates(f.ctx)
	require.NoError(t, err)
	require.Len(t, jan1, 1, "2025 is still due (its notice is not recorded yet); 2026 has $50")
	decKey, _, err := f.p.Effect().Identity(dec31[0])
	require.NoError(t, err)
	janKey, _, err := f.p.Effect().Identity(jan1[0])
	require.NoError(t, err)
	require.Equal(t, decKey, janKey)
	require.Equal(t, "tax1099.threshold:v1:payee=alice/tax_year#2025", janKey.String())

	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeInFlight], "the January tick meets the December claim")
	require.Zero(t, rep.ProviderCalls)

	release()
	<-done
	require.NoError(t, lateErr)
	require.Equal(t, 1, lateRep.Outcomes[idempotency.OutcomeApplied])

	// A later tick on January 1 finds nothing to do for 2025.
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)
	require.Equal(t, 1, f.mail.Effects())
	require.Equal(t, []notice{{"alice", 2025, "sent", "msg_001", 60000}}, f.notices(t))
}

func TestOverlappingTicksSendOneNoticePerPayee(t *testing.T) {
	t.Parallel()
	f := setup(t)
	const payees = 20
	for i := range payees {
		id := fmt.Sprintf("p%02d", i)
		f.payee(t, id, id+"@example.com")
		f.pay(t, id, 40000, date(2025, 3, 1))
		f.pay(t, id, 20000+int64(i), date(2025, 8, 1))
	}
	var wg sync.WaitGroup
	var calls atomic.Int64
	errs := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := f.p.Tick(f.ctx)
			calls.Add(int64(rep.ProviderCalls))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	// A tick that saw some payees in flight leaves them to the next one.
	_, err := f.p.Tick(f.ctx)
	require.NoError(t, err)

	require.Equal(t, payees, f.mail.Effects(), "emails really sent")
	require.EqualValues(t, payees, calls.Load(), "the claim stops the other ticks before the provider")
	require.Len(t, f.notices(t), payees)
	for i := range payees {
		require.Len(t, f.mail.sentTo(fmt.Sprintf("p%02d@example.com", i)), 1)
	}
	require.Empty(t, f.mail.RequestsFor(""), "every request carried a key")
	require.Zero(t, f.mail.Replays(), "no second request for any key")
}

func TestCrashAfterTheEmailIsRepairedByTheProviderReplay(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for _, id := range []string{"p1", "p2", "p3"} {
		f.payee(t, id, id+"@example.com")
		f.pay(t, id, 60000, date(2025, 5, 1))
	}
	var crashed atomic.Bool
	f.p.beforeRecord = func(c Candidate) error {
		if c.PayeeID == "p2" && crashed.CompareAndSwap(false, true) {
			return errors.New("worker killed after the provider answered")
		}
		return nil
	}
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeError])
	require.Equal(t, 3, f.mail.Effects(), "p2's email went out")
	require.Len(t, f.notices(t), 2, "the crash lost p2's row")
	first := f.mail.sentTo("p2@example.com")[0]

	// Within the dead worker's lease: nobody calls.
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeInFlight])
	require.Zero(t, rep.ProviderCalls)

	// After the lease: taken over under the same key; the provider replays.
	f.clock.Advance(3 * time.Minute)
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 1, rep.ProviderCalls)
	require.Equal(t, 3, f.mail.Effects(), "one email for p2, not two")
	require.Equal(t, 1, f.mail.Replays())
	require.Contains(t, f.notices(t), notice{"p2", 2025, "sent", first.ID, 60000}, "the row carries the first message's id")
}

func TestCrashPastTheProviderWindowWaitsForReconciliation(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.payee(t, "p1", "p1@example.com")
	f.pay(t, "p1", 60000, date(2025, 5, 1))
	f.p.beforeRecord = func(Candidate) error { return errors.New("worker killed after the provider answered") }
	_, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, f.mail.Effects())
	f.p.beforeRecord = nil

	// The ticks stopped for a day: the provider forgot the key, so a retry
	// would send a second email. The claim is parked instead.
	f.clock.Advance(DedupWindow + time.Hour)
	key, _ := Key(Candidate{PayeeID: "p1", TaxYear: 2025})
	require.False(t, f.mail.Remembers(key.String()))
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeNeedsReconciliation])
	require.Zero(t, rep.ProviderCalls)
	require.Len(t, rep.Failures, 1)
	require.ErrorIs(t, rep.Failures[0].Err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, 1, f.mail.Effects(), "no second email")
	require.Empty(t, f.notices(t))

	stuck, err := f.p.Executor().Store().(idempotency.Operator).ListStuck(f.ctx, idempotency.ListStuckRequest{Namespace: Keys.Namespace})
	require.NoError(t, err)
	require.Len(t, stuck, 1)
	require.Equal(t, key.String(), stuck[0].Key)
}

func TestRefusedAddressIsRecordedFailedUntilTheAddressChanges(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.payee(t, "erin", "erin@bounces.example")
	f.pay(t, "erin", 80000, date(2025, 5, 1))
	f.mail.rejectAddress("erin@bounces.example")

	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomePermanent])
	require.Zero(t, f.mail.Effects())
	require.Equal(t, []notice{{"erin", 2025, "failed", "", 80000}}, f.notices(t))
	key, _ := Key(Candidate{PayeeID: "erin", TaxYear: 2025})
	active, err := f.p.Executor().Store().Lookup(f.ctx, []string{key.String()})
	require.NoError(t, err)
	require.Empty(t, active, "the ledger record is failed, which frees the key")

	// The next tick leaves erin alone: no request for a refused address.
	requests := f.mail.Requests()
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)
	after := f.mail.Requests()
	require.Equal(t, requests, after)

	// Her address is fixed: the same key, a new message, one email.
	_, err = f.pool.Exec(f.ctx, `UPDATE payees SET email = 'erin@example.com' WHERE id = 'erin'`)
	require.NoError(t, err)
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Len(t, f.mail.sentTo("erin@example.com"), 1)
	require.Equal(t, []notice{
		{"erin", 2025, "failed", "", 80000},
		{"erin", 2025, "sent", "msg_001", 80000},
	}, f.notices(t))
}
