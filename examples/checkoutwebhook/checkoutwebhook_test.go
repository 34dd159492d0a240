package checkoutwebhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const secret = "whsec_test_checkoutwebhook"

type fixture struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	lic   *licenseService
	clock *clocktest.Clock
	p     *Program
	srv   *httptest.Server // the webhook endpoint
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) { c.MaxConns = 24 })
	require.NoError(t, Migrate(ctx, pool))
	clock := clocktest.New()
	lic := newLicenseService(t, clock.Now)
	p, err := New(Config{DB: pool, WebhookSecret: secret, LicenseURL: lic.url(), APIKey: licenseAPIKey,
		Now: clock.Now, Sleep: clock.Sleep})
	require.NoError(t, err)
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return &fixture{ctx: ctx, pool: pool, lic: lic, clock: clock, p: p, srv: srv}
}

// checkout is the part of a Checkout Session the tests vary.
type checkout struct {
	ID      string
	Account string // client_reference_id
	Plan    string
	Seats   string // metadata seats; "" leaves it out
	Payment stripe.CheckoutSessionPaymentStatus
}

func paidCheckout(id, account string) checkout {
	return checkout{ID: id, Account: account, Plan: "pro", Seats: "5", Payment: stripe.CheckoutSessionPaymentStatusPaid}
}

// eventJSON renders an event as Stripe sends it, in the API version
// stripe-go v76 expects.
func eventJSON(t *testing.T, id string, typ stripe.EventType, created time.Time, c checkout) []byte {
	t.Helper()
	md := map[string]string{}
	if c.Plan != "" {
		md["plan"] = c.Plan
	}
	if c.Seats != "" {
		md["seats"] = c.Seats
	}
	obj := map[string]any{
		"id": c.ID, "object": "checkout.session", "mode": "payment", "status": "complete",
		"client_reference_id": c.Account, "customer": "cus_" + c.Account, "payment_status": string(c.Payment),
		"metadata": md,
	}
	b, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "api_version": stripe.APIVersion, "created": created.Unix(),
		"type": string(typ), "livemode": false, "pending_webhooks": 1, "data": map[string]any{"object": obj},
	})
	require.NoError(t, err)
	return b
}

// sign signs a payload the way Stripe does, with the endpoint's secret.
func sign(payload []byte, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: at}).Header
}

type reply struct {
	Status     int
	RetryAfter string
	Outcome    string
}

// post sends a request to the endpoint as Stripe does. Safe to call from
// any goroutine.
func (f *fixture) post(payload []byte, signature string) (reply, error) {
	req, err := http.NewRequest(http.MethodPost, f.srv.URL, bytes.NewReader(payload))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	if signature != "" {
		req.Header.Set("Stripe-Signature", signature)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	var out struct{ Outcome string }
	_ = json.Unmarshal(body, &out)
	return reply{resp.StatusCode, resp.Header.Get("Retry-After"), out.Outcome}, nil
}

// deliver signs payload now and delivers it.
func (f *fixture) deliver(t *testing.T, payload []byte) reply {
	t.Helper()
	r, err := f.post(payload, sign(payload, time.Now()))
	require.NoError(t, err)
	return r
}

type eventRow struct {
	ID          string
	Type        string
	Session     string
	Paid        bool
	Deliveries  int
	Outcome     string
	Disposition string
}

func (f *fixture) events(t *testing.T) []eventRow {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT event_id, type, coalesce(checkout_session_id, ''), paid, deliveries,
		coalesce(last_outcome, ''), coalesce(last_disposition, '') FROM stripe_events ORDER BY event_id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[eventRow])
	require.NoError(t, err)
	return out
}

type provisioningRow struct {
	Session string
	Status  string
	Account string
	Seats   int
	License string
	Event   string
}

func (f *fixture) provisionings(t *testing.T) []provisioningRow {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT checkout_session_id, status, account_id, seats, coalesce(license_id, ''), event_id
		FROM provisionings ORDER BY id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[provisioningRow])
	require.NoError(t, err)
	return out
}

func (f *fixture) ledgerRows(t *testing.T) int {
	t.Helper()
	var n int
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FROM effect_ledger`).Scan(&n))
	return n
}

func TestRejectedRequestsGet400AndTouchNothing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	now := time.Now()
	good := eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, now, paidCheckout("cs_1", "acct_1"))
	otherVersion := bytes.Replace(good, []byte(stripe.APIVersion), []byte("2020-08-27"), 1)
	notASession := []byte(fmt.Sprintf(`{"id":"evt_2","object":"event","api_version":%q,"type":"checkout.session.completed","data":{"object":{"id":"pi_1","object":"payment_intent"}}}`, stripe.APIVersion))
	noSessionID := []byte(fmt.Sprintf(`{"id":"evt_3","object":"event","api_version":%q,"type":"checkout.session.completed","data":{"object":{"object":"checkout.session"}}}`, stripe.APIVersion))
	forged := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: good, Secret: "whsec_someone_else"}).Header

	cases := []struct {
		name      string
		payload   []byte
		signature string
		want      int
	}{
		{"no signature", good, "", http.StatusBadRequest},
		{"signed with another secret", good, forged, http.StatusBadRequest},
		{"signature of another body", good, sign([]byte(`{"id":"evt_x"}`), now), http.StatusBadRequest},
		{"garbled signature header", good, "t=abc,v1=zz", http.StatusBadRequest},
		{"stale timestamp", good, sign(good, now.Add(-10*time.Minute)), http.StatusBadRequest},
		{"malformed JSON", []byte(`{"id":"evt_1",`), sign([]byte(`{"id":"evt_1",`), now), http.StatusBadRequest},
		{"another API version", otherVersion, sign(otherVersion, now), http.StatusBadRequest},
		{"checkout event without a session", notASession, sign(notASession, now), http.StatusBadRequest},
		{"session without an id", noSessionID, sign(noSessionID, now), http.StatusBadRequest},
		{"body over MaxBody", bytes.Repeat([]byte(" "), DefaultMaxBody+1), "", http.StatusRequestEntityTooLarge},
	}
	for _, c := range cases {
		r, err := f.post(c.payload, c.signature)
		require.NoError(t, err)
		require.Equal(t, c.want, r.Status, c.name)
	}
	resp, err := http.Get(f.srv.URL)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	require.Empty(t, f.events(t), "no event recorded")
	require.Zero(t, f.ledgerRows(t), "no claim")
	require.Empty(t, f.provisionings(t))
	requests := f.lic.Requests()
	require.Zero(t, requests, "nothing reached the license service")

	// The control: the same event, properly signed, is accepted.
	require.Equal(t, http.StatusOK, f.deliver(t, good).Status)
	require.Equal(t, 1, f.lic.Effects())
}

// Stripe delivers one event twenty times at once. The first claims the
// session and holds the license call; the other nineteen meet its claim
// and get 503 with Retry-After: the lease. Their redeliveries, once the
// first finished, are 200 with no call.
func TestSameEventDeliveredTwentyTimesConcurrentlyProvisionsOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	payload := eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, time.Now(), paidCheckout("cs_1", "acct_1"))
	entered, release := f.lic.HoldNext()
	const n = 20
	replies := make(chan reply, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			r, err := f.post(payload, sign(payload, time.Now()))
			if err != nil {
				errs <- err
				return
			}
			replies <- r
		}()
	}
	<-entered // one delivery holds the claim and is at the license service
	statuses := map[int]int{}
	for range n - 1 {
		select {
		case r := <-replies:
			require.Equal(t, http.StatusServiceUnavailable, r.Status)
			require.Equal(t, "in_flight", r.Outcome)
			require.Equal(t, "60", r.RetryAfter, "the holder's lease")
			statuses[r.Status]++
		case err := <-errs:
			t.Fatal(err)
		}
	}
	release()
	select {
	case r := <-replies:
		require.Equal(t, reply{Status: http.StatusOK, Outcome: "applied"}, r)
	case err := <-errs:
		t.Fatal(err)
	}

	// Stripe retries the 503s.
	for range n - 1 {
		r := f.deliver(t, payload)
		require.Equal(t, reply{Status: http.StatusOK, Outcome: "already_applied"}, r)
	}
	requests := f.lic.Requests()
	require.Equal(t, 1, requests, "one call reached the license service")
	require.Equal(t, 1, f.lic.Effects())
	require.Equal(t, []provisioningRow{{"cs_1", "provisioned", "acct_1", 5, "lic_001", "evt_1"}}, f.provisionings(t))
	require.Equal(t, []eventRow{{"evt_1", "checkout.session.completed", "cs_1", true, 2*n - 1, "already_applied", "ack"}}, f.events(t))
}

// A delayed payment method: checkout.session.completed arrives unpaid, then
// checkout.session.async_payment_succeeded. Another checkout is completed
// paid and its async event comes too. Each session is provisioned once,
// by whichever paid event comes first, and every event is on record.
func TestTwoEventsForOneSessionProvisionOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	t0 := time.Now()
	unpaid := paidCheckout("cs_async", "acct_1")
	unpaid.Payment = stripe.CheckoutSessionPaymentStatusUnpaid
	r := f.deliver(t, eventJSON(t, "evt_a1", stripe.EventTypeCheckoutSessionCompleted, t0, unpaid))
	require.Equal(t, reply{Status: http.StatusOK, Outcome: OutcomeUnpaid}, r)
	require.Zero(t, f.ledgerRows(t), "nothing to provision yet")
	r = f.deliver(t, eventJSON(t, "evt_a2", stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, t0.Add(time.Hour), paidCheckout("cs_async", "acct_1")))
	require.Equal(t, reply{Status: http.StatusOK, Outcome: "applied"}, r)

	r = f.deliver(t, eventJSON(t, "evt_b1", stripe.EventTypeCheckoutSessionCompleted, t0, paidCheckout("cs_card", "acct_2")))
	require.Equal(t, reply{Status: http.StatusOK, Outcome: "applied"}, r)
	r = f.deliver(t, eventJSON(t, "evt_b2", stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, t0.Add(time.Minute), paidCheckout("cs_card", "acct_2")))
	require.Equal(t, reply{Status: http.StatusOK, Outcome: "already_applied"}, r, "a second event for one session is the same intent")

	require.Equal(t, 2, f.lic.Effects())
	requests := f.lic.Requests()
	require.Equal(t, 2, requests)
	require.Equal(t, []provisioningRow{
		{"cs_async", "provisioned", "acct_1", 5, "lic_001", "evt_a2"},
		{"cs_card", "provisioned", "acct_2", 5, "lic_002", "evt_b1"},
	}, f.provisionings(t))
	require.Equal(t, []eventRow{
		{"evt_a1", "checkout.session.completed", "cs_async", false, 1, OutcomeUnpaid, "ack"},
		{"evt_a2", "checkout.session.async_payment_succeeded", "cs_async", true, 1, "applied", "ack"},
		{"evt_b1", "checkout.session.completed", "cs_card", true, 1, "applied", "ack"},
		{"evt_b2", "checkout.session.async_payment_succeeded", "cs_card", true, 1, "already_applied", "ack"},
	}, f.events(t))
}

// Both events of one session delivered ten times each, all at once.
func TestTwoEventsForOneSessionDeliveredConcurrently(t *testing.T) {
	t.Parallel()
	f := setup(t)
	t0 := time.Now()
	payloads := [][]byte{
		eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, t0, paidCheckout("cs_1", "acct_1")),
		eventJSON(t, "evt_2", stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, t0.Add(time.Second), paidCheckout("cs_1", "acct_1")),
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		retried [][]byte
		errs    []error
	)
	for i := range 20 {
		payload := payloads[i%2]
		wg.Go(func() {
			r, err := f.post(payload, sign(payload, time.Now()))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case r.Status == http.StatusServiceUnavailable:
				retried = append(retried, payload) // in flight elsewhere, most likely
			case r.Status != http.StatusOK:
				errs = append(errs, fmt.Errorf("answered %+v", r))
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	for _, payload := range retried { // Stripe redelivers what got 503
		require.Equal(t, reply{Status: http.StatusOK, Outcome: "already_applied"}, f.deliver(t, payload))
	}
	requests := f.lic.Requests()
	require.Equal(t, 1, requests, "the claim stops every other delivery before the call")
	require.Equal(t, 1, f.lic.Effects())
	rows := f.provisionings(t)
	require.Len(t, rows, 1)
	require.Contains(t, []string{"evt_1", "evt_2"}, rows[0].Event)
	require.Len(t, f.events(t), 2)
}

// Stripe does not deliver in order: the async success (created later)
// arrives before the completed event, which says unpaid. The first
// provisions; the late one changes nothing; a redelivery of the first is
// already applied.
func TestOutOfOrderDeliveries(t *testing.T) {
	t.Parallel()
	f := setup(t)
	t0 := time.Now()
	unpaid := paidCheckout("cs_1", "acct_1")
	unpaid.Payment = stripe.CheckoutSessionPaymentStatusUnpaid
	later := eventJSON(t, "evt_2", stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, t0.Add(time.Hour), paidCheckout("cs_1", "acct_1"))
	earlier := eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, t0, unpaid)

	require.Equal(t, reply{Status: http.StatusOK, Outcome: "applied"}, f.deliver(t, later))
	require.Equal(t, reply{Status: http.StatusOK, Outcome: OutcomeUnpaid}, f.deliver(t, earlier))
	require.Equal(t, reply{Status: http.StatusOK, Outcome: "already_applied"}, f.deliver(t, later))

	require.Equal(t, 1, f.lic.Effects())
	require.Equal(t, []provisioningRow{{"cs_1", "provisioned", "acct_1", 5, "lic_001", "evt_2"}}, f.provisionings(t))
	require.Equal(t, []eventRow{
		{"evt_1", "checkout.session.completed", "cs_1", false, 1, OutcomeUnpaid, "ack"},
		{"evt_2", "checkout.session.async_payment_succeeded", "cs_1", true, 2, "already_applied", "ack"},
	}, f.events(t))
}

func TestOtherEventsAreRecordedAndAcknowledged(t *testing.T) {
	t.Parallel()
	f := setup(t)
	other := []byte(fmt.Sprintf(`{"id":"evt_9","object":"event","api_version":%q,"created":%d,"type":"customer.created","data":{"object":{"id":"cus_1","object":"customer"}}}`,
		stripe.APIVersion, time.Now().Unix()))
	require.Equal(t, reply{Status: http.StatusOK, Outcome: OutcomeIgnored}, f.deliver(t, other))

	// Paid, but without the plan the product needs: no retry can help.
	noPlan := paidCheckout("cs_1", "acct_1")
	noPlan.Plan = ""
	require.Equal(t, reply{Status: http.StatusOK, Outcome: OutcomeUnprovisionable},
		f.deliver(t, eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, time.Now(), noPlan)))

	require.Equal(t, []eventRow{
		{"evt_1", "checkout.session.completed", "cs_1", true, 1, OutcomeUnprovisionable, "dead_letter"},
		{"evt_9", "customer.created", "", false, 1, OutcomeIgnored, "ack"},
	}, f.events(t))
	require.Zero(t, f.ledgerRows(t))
	require.Zero(t, f.lic.Effects())
}

// The license service asks to wait: 503 with its delay, a redelivery
// before it is not due (no call), and when Stripe gives up the catch-up
// tick provisions from the recorded event.
func TestLicenseServiceUnavailableThenTheTickProvisions(t *testing.T) {
	t.Parallel()
	f := setup(t)
	payload := eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, time.Now(), paidCheckout("cs_1", "acct_1"))
	f.lic.AnswerNext(http.StatusServiceUnavailable) // with Retry-After: 120

	require.Equal(t, reply{Status: http.StatusServiceUnavailable, RetryAfter: "120", Outcome: "retryable"}, f.deliver(t, payload))
	f.clock.Advance(20 * time.Second)
	require.Equal(t, reply{Status: http.StatusServiceUnavailable, RetryAfter: "100", Outcome: "not_due"}, f.deliver(t, payload))
	requests := f.lic.Requests()
	require.Equal(t, 1, requests, "the redelivery before the delay made no call")
	require.Equal(t, []eventRow{{"evt_1", "checkout.session.completed", "cs_1", true, 2, "not_due", "retry"}}, f.events(t))

	f.clock.Advance(100 * time.Second)
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Candidates)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, []provisioningRow{{"cs_1", "provisioned", "acct_1", 5, "lic_001", "evt_1"}}, f.provisionings(t))

	// A late redelivery, and the next tick: nothing more.
	require.Equal(t, reply{Status: http.StatusOK, Outcome: "already_applied"}, f.deliver(t, payload))
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)
	require.Equal(t, 1, f.lic.Effects())
}

// The license service refuses the account: no redelivery can help, so the
// answer is 200 and the event is left for an operator, with a failed
// provisioning row.
func TestRefusalIsDeadLetteredWith200(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.lic.refuse("acct_closed")
	payload := eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, time.Now(), paidCheckout("cs_1", "acct_closed"))

	require.Equal(t, reply{Status: http.StatusOK, Outcome: "permanent"}, f.deliver(t, payload))
	require.Zero(t, f.lic.Effects())
	require.Equal(t, []provisioningRow{{"cs_1", "failed", "acct_closed", 5, "", "evt_1"}}, f.provisionings(t))
	require.Equal(t, []eventRow{{"evt_1", "checkout.session.completed", "cs_1", true, 1, "permanent", "dead_letter"}}, f.events(t))
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates, "the failed row keeps the session out of the tick")
}

// Two events for one session that disagree on the seats: the second is a
// key reused with another payload. It is refused with no call, answered
// 200 and dead-lettered; the first provisioning stands.
func TestSessionChangedUnderOneKeyIsDeadLettered(t *testing.T) {
	t.Parallel()
	f := setup(t)
	t0 := time.Now()
	more := paidCheckout("cs_1", "acct_1")
	more.Seats = "7"
	require.Equal(t, http.StatusOK, f.deliver(t, eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, t0, paidCheckout("cs_1", "acct_1"))).Status)
	require.Equal(t, reply{Status: http.StatusOK, Outcome: "mismatch"},
		f.deliver(t, eventJSON(t, "evt_2", stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, t0.Add(time.Minute), more)))

	requests := f.lic.Requests()
	require.Equal(t, 1, requests)
	require.Equal(t, []provisioningRow{{"cs_1", "provisioned", "acct_1", 5, "lic_001", "evt_1"}}, f.provisionings(t))
	events := f.events(t)
	require.Equal(t, "dead_letter", events[1].Disposition)
	var lastError string
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT last_error FROM stripe_events WHERE event_id = 'evt_2'`).Scan(&lastError))
	require.Contains(t, lastError, "different payload")
}

// The license was granted and the handler died before the row was
// written. Stripe redelivers: within the dead handler's lease the claim is
// in flight (503); after it, the claim is taken over under the same key
// and the license service replays the first grant. One license.
func TestCrashAfterTheGrantIsRepairedByStripesRedelivery(t *testing.T) {
	t.Parallel()
	f := setup(t)
	payload := eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, time.Now(), paidCheckout("cs_1", "acct_1"))
	f.p.beforeRecord = func(Provisioning) error { return errors.New("handler killed after the grant") }
	require.Equal(t, reply{Status: http.StatusServiceUnavailable, RetryAfter: "1", Outcome: "error"}, f.deliver(t, payload))
	f.p.beforeRecord = nil
	require.Equal(t, 1, f.lic.Effects())
	require.Empty(t, f.provisionings(t))

	require.Equal(t, reply{Status: http.StatusServiceUnavailable, RetryAfter: "60", Outcome: "in_flight"}, f.deliver(t, payload))
	f.clock.Advance(Lease)
	require.Equal(t, reply{Status: http.StatusOK, Outcome: "applied"}, f.deliver(t, payload))

	require.Equal(t, 1, f.lic.Effects(), "one license")
	require.Equal(t, 1, f.lic.Replays())
	require.Equal(t, []provisioningRow{{"cs_1", "provisioned", "acct_1", 5, "lic_001", "evt_1"}}, f.provisionings(t))
}

// The same crash, but Stripe's next delivery comes after the license
// service forgot the key: a retry would grant a second license. The
// record is parked for an operator and the delivery acknowledged.
func TestCrashRedeliveredPastTheServiceWindowIsParkedForAnOperator(t *testing.T) {
	t.Parallel()
	f := setup(t)
	payload := eventJSON(t, "evt_1", stripe.EventTypeCheckoutSessionCompleted, time.Now(), paidCheckout("cs_1", "acct_1"))
	f.p.beforeRecord = func(Provisioning) error { return errors.New("handler killed after the grant") }
	require.Equal(t, http.StatusServiceUnavailable, f.deliver(t, payload).Status)
	f.p.beforeRecord = nil

	f.clock.Advance(DedupWindow + time.Hour)
	require.Equal(t, reply{Status: http.StatusOK, Outcome: "needs_reconciliation"}, f.deliver(t, payload))
	requests := f.lic.Requests()
	require.Equal(t, 1, requests, "no second grant request")
	require.Equal(t, 1, f.lic.Effects())
	require.Empty(t, f.provisionings(t))
	require.Equal(t, "dead_letter", f.events(t)[0].Disposition)

	stuck, err := f.p.Executor().Store().(idempotency.Operator).ListStuck(f.ctx, idempotency.ListStuckRequest{Namespace: Keys.Namespace})
	require.NoError(t, err)
	require.Len(t, stuck, 1)
	require.True(t, strings.HasSuffix(stuck[0].Key, "checkout_session=cs_1"))
}
