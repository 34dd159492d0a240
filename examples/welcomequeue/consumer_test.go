package welcomequeue_test

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/examples/welcomequeue"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// settlement is how the consumer settled one delivery.
type settlement struct {
	msg    string // the message's id
	action string // "ack", "nack" or "dead_letter"
	delay  time.Duration
	reason string
}

// delivery is one delivery of a message by the fake broker. Each is
// settled exactly once; a second settlement fails the test.
type delivery struct {
	t       *testing.T
	msg     welcomequeue.Message
	settled chan<- settlement
	done    atomic.Bool
}

func (d *delivery) Message() welcomequeue.Message { return d.msg }

func (d *delivery) settle(s settlement) error {
	if d.done.Swap(true) {
		d.t.Errorf("delivery of %s settled twice (then %s)", d.msg.ID, s.action)
	}
	s.msg = d.msg.ID
	d.settled <- s
	return nil
}

func (d *delivery) Ack(context.Context) error { return d.settle(settlement{action: "ack"}) }
func (d *delivery) Nack(_ context.Context, delay time.Duration) error {
	return d.settle(settlement{action: "nack", delay: delay})
}
func (d *delivery) DeadLetter(_ context.Context, reason string) error {
	return d.settle(settlement{action: "dead_letter", reason: reason})
}

// fixture is a consumer on PostgreSQL reading from a channel that stands
// in for the broker, against a fake mail API, with a fake clock shared by
// the ledger and the executor.
type fixture struct {
	pool     *pgxpool.Pool
	ledger   *pgguard.Store
	clock    *clocktest.Clock
	mail     *httpfake.Receiver
	queue    chan welcomequeue.Delivery
	settled  chan settlement
	consumer *welcomequeue.Consumer
}

func setup(t *testing.T, workers int) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{pool: pgtest.Pool(t), clock: clocktest.New(), queue: make(chan welcomequeue.Delivery), settled: make(chan settlement, 64)}
	// The mail API deduplicates by Idempotency-Key, as the real one does:
	// a key it has sent under is answered with the first answer again
	// (Idempotent-Replayed: true), and nothing is sent.
	f.mail = httpfake.New(&httpfake.Config{Respond: mailAPIRespond})
	t.Cleanup(f.mail.Close) // after the consumer has stopped
	require.NoError(t, welcomequeue.Migrate(ctx, f.pool))
	var err error
	f.ledger, err = pgguard.New(f.pool, &pgguard.Config{Now: f.clock.Now})
	require.NoError(t, err)
	exec, err := idempotency.NewExecutor(f.ledger, &idempotency.Config{
		Now: f.clock.Now,
		// In-run backoff moves the fake clock instead of waiting.
		Sleep: func(ctx context.Context, d time.Duration) error { f.clock.Advance(d); return ctx.Err() },
	})
	require.NoError(t, err)
	f.consumer = &welcomequeue.Consumer{Exec: exec, Effect: welcomequeue.NewEffect(f.mail.URL(), nil), Workers: workers}
	stopped := make(chan error, 1)
	go func() { stopped <- f.consumer.Run(ctx, f.queue) }()
	t.Cleanup(func() {
		close(f.queue)
		require.NoError(t, <-stopped)
		require.Empty(t, f.settled, "settlements the test did not look at")
	})
	return f
}

// deliver hands one delivery of m to the consumer.
func (f *fixture) deliver(t *testing.T, m welcomequeue.Message) {
	f.queue <- &delivery{t: t, msg: m, settled: f.settled}
}

// next waits for the next settlement. The timeout only keeps a broken
// consumer from hanging the test.
func (f *fixture) next(t *testing.T) settlement {
	t.Helper()
	select {
	case s := <-f.settled:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("no delivery was settled within 30s")
		return settlement{}
	}
}

// mailAPIRespond is the mail API's own check of a request that would send:
// a body that is not an Email is refused, and so is the address
// nobody@invalid (400, nothing sent).
func mailAPIRespond(r *httpfake.Request) (int, []byte) {
	var e welcomequeue.Email
	if json.Unmarshal(r.Body, &e) != nil || e.To == "" {
		return http.StatusBadRequest, []byte(`{"error":"not an email"}`)
	}
	if e.To == "nobody@invalid" {
		return http.StatusBadRequest, []byte(`{"error":"address refused"}`)
	}
	return 0, nil // sent: 200 {"id":"eff_001"}
}

func wait(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not happen within 30s", what)
	}
}

func message(t *testing.T, id, user, email string) welcomequeue.Message {
	t.Helper()
	body, err := json.Marshal(welcomequeue.Signup{UserID: user, Email: email})
	require.NoError(t, err)
	return welcomequeue.Message{ID: id, Body: body}
}

// history returns every ledger record of a user's welcome, newest first.
func (f *fixture) history(t *testing.T, user string) []idempotency.Record {
	t.Helper()
	key, err := welcomequeue.Key(welcomequeue.Signup{UserID: user})
	require.NoError(t, err)
	recs, err := f.ledger.History(context.Background(), key.String())
	require.NoError(t, err)
	return recs
}

// rows returns the welcome_emails rows: user, email and status.
func (f *fixture) rows(t *testing.T) [][3]string {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT user_id, email, status FROM welcome_emails ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out [][3]string
	for rows.Next() {
		var r [3]string
		require.NoError(t, rows.Scan(&r[0], &r[1], &r[2]))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

func TestRedeliveryWhileAnotherWorkerHoldsTheClaimIsNackedAndTheEmailIsSentOnce(t *testing.T) {
	f := setup(t, 2)
	// Worker 1's first request: held until the redelivery is settled.
	arrived, release := f.mail.HoldNext()
	// Then 503, refused before acting, on all three in-run attempts.
	f.mail.AnswerNext(http.StatusServiceUnavailable, http.StatusServiceUnavailable, http.StatusServiceUnavailable)
	m := message(t, "m1", "u1", "ada@example.com")

	f.deliver(t, m)
	wait(t, arrived, "worker 1's request")
	// The broker redelivers (a visibility timeout ran out) while worker 1
	// holds the claim and its request is under way.
	f.deliver(t, m)
	s := f.next(t)
	require.Equal(t, "nack", s.action, "a delivery in flight elsewhere must not be acked: %+v", s)
	require.Equal(t, welcomequeue.Lease, s.delay, "retried after the holder's lease")
	require.Zero(t, f.mail.Requests()-1, "the redelivery made no request")

	// Worker 1's request fails: 503 on all three in-run attempts. Its
	// claim is released and its delivery nacked.
	release()
	s = f.next(t)
	require.Equal(t, "nack", s.action, "%+v", s)
	require.Positive(t, s.delay, "released with the effect's backoff between runs")
	require.Equal(t, 3, f.mail.Requests())
	require.Zero(t, f.mail.Effects())
	require.Equal(t, idempotency.StateReleased, f.history(t, "u1")[0].State)

	// The mail API recovers (its script is used up). A broker that
	// redelivers before the delay is told to wait again (not due), with no
	// request.
	f.deliver(t, m)
	early := f.next(t)
	require.Equal(t, "nack", early.action, "%+v", early)
	require.InDelta(t, s.delay, early.delay, float64(time.Microsecond), "the same due time")
	require.Equal(t, 3, f.mail.Requests())

	// Redelivered once due: the email goes out.
	f.clock.Advance(early.delay)
	f.deliver(t, m)
	require.Equal(t, settlement{msg: "m1", action: "ack"}, f.next(t))
	// A late redelivery is acked from the ledger, without a request.
	f.deliver(t, m)
	require.Equal(t, settlement{msg: "m1", action: "ack"}, f.next(t))

	require.Equal(t, 1, f.mail.Effects(), "one welcome email")
	require.Equal(t, 4, f.mail.Requests(), "3 refused attempts, 1 send, none for the early and the late redelivery")
	recs := f.history(t, "u1")
	require.Len(t, recs, 1)
	require.Equal(t, idempotency.StateApplied, recs[0].State)
	require.Equal(t, [][3]string{{"u1", "ada@example.com", "sent"}}, f.rows(t))
}

func TestPermanentRefusalIsDeadLettered(t *testing.T) {
	f := setup(t, 2)
	f.deliver(t, message(t, "m1", "u1", "nobody@invalid")) // the API refuses the address
	s := f.next(t)
	require.Equal(t, "dead_letter", s.action, "%+v", s)
	require.Contains(t, s.reason, "permanent: ")
	require.Equal(t, 1, f.mail.Requests(), "a refusal is not retried in-run")
	require.Zero(t, f.mail.Effects())
	recs := f.history(t, "u1")
	require.Len(t, recs, 1)
	require.Equal(t, idempotency.StateFailed, recs[0].State, "the refusal is recorded; the key is free")
	require.Empty(t, f.rows(t))
}

func TestMismatchIsDeadLettered(t *testing.T) {
	f := setup(t, 2)
	f.deliver(t, message(t, "m1", "u1", "ada@example.com"))
	require.Equal(t, settlement{msg: "m1", action: "ack"}, f.next(t))

	// Another message for the same user with another address: the same
	// key with another payload. Nothing is sent; a person must look.
	f.deliver(t, message(t, "m2", "u1", "ada@elsewhere.example"))
	s := f.next(t)
	require.Equal(t, "dead_letter", s.action, "%+v", s)
	require.Contains(t, s.reason, "mismatch: ")
	require.Equal(t, 1, f.mail.Effects())
	require.Equal(t, 1, f.mail.Requests())
	require.Equal(t, [][3]string{{"u1", "ada@example.com", "sent"}}, f.rows(t))
}

func TestTwentyConcurrentDeliveriesSendOneEmail(t *testing.T) {
	const n = 20
	f := setup(t, n)
	_, release := f.mail.HoldNext() // the claim's winner: held until every other delivery is settled
	m := message(t, "m1", "u1", "ada@example.com")
	go func() {
		for range n {
			f.deliver(t, m)
		}
	}()
	// Every delivery but the winner's meets its live claim.
	for range n - 1 {
		s := f.next(t)
		require.Equal(t, settlement{msg: "m1", action: "nack", delay: welcomequeue.Lease}, s)
	}
	release()
	require.Equal(t, settlement{msg: "m1", action: "ack"}, f.next(t), "the winner sent the email")
	// The broker redelivers the 19: each is acked from the ledger.
	go func() {
		for range n - 1 {
			f.deliver(t, m)
		}
	}()
	for range n - 1 {
		require.Equal(t, settlement{msg: "m1", action: "ack"}, f.next(t))
	}
	require.Equal(t, 1, f.mail.Effects(), "one email for 39 deliveries")
	require.Equal(t, 1, f.mail.Requests(), "one request: every other delivery stopped at the claim or the record")
	require.Len(t, f.rows(t), 1)
}

func TestUnusableMessagesAreDeadLettered(t *testing.T) {
	f := setup(t, 1)
	f.deliver(t, welcomequeue.Message{ID: "m1", Body: []byte("{not json")})
	s := f.next(t)
	require.Equal(t, "dead_letter", s.action)
	require.Contains(t, s.reason, "not a signup: ")

	f.deliver(t, message(t, "m2", "", "ada@example.com")) // no user: no key
	s = f.next(t)
	require.Equal(t, "dead_letter", s.action)
	require.Contains(t, s.reason, "invalid: ")
	require.Zero(t, f.mail.Requests())
}

func TestRunReturnsWhenTheContextIsDone(t *testing.T) {
	f := setup(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	other := make(chan welcomequeue.Delivery)
	var wg sync.WaitGroup
	var err error
	wg.Go(func() { err = f.consumer.Run(ctx, other) })
	cancel()
	wg.Wait()
	require.ErrorIs(t, err, context.Canceled)
}
