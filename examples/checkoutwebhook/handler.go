package checkoutwebhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/effectonce/effectonce/idempotency"
)

// Outcomes of a delivery that runs no provisioning, as stripe_events
// records them (a run's outcome is recorded by its name: applied,
// already_applied, in_flight...).
const (
	// OutcomeIgnored: an event type this endpoint does not handle.
	OutcomeIgnored = "ignored"
	// OutcomeUnpaid: the session in the event is not paid (yet): a
	// delayed payment method; checkout.session.async_payment_succeeded
	// will follow.
	OutcomeUnpaid = "unpaid"
	// OutcomeUnprovisionable: a paid session without a client_reference_id
	// or a plan, or with bad seats: dead-lettered.
	OutcomeUnprovisionable = "unprovisionable"
	// OutcomeNotRecorded: the event could not be recorded (the database
	// failed); nothing ran. Not stored, since the row could not be
	// written.
	OutcomeNotRecorded = "not_recorded"
)

// ServeHTTP is the webhook endpoint. It verifies the Stripe-Signature
// header with stripe-go's webhook package before it reads anything from
// the body or writes anything, and answers from the outcome:
//
//	request or outcome                                   status                   left behind
//	not a POST                                           405                      nothing
//	body over MaxBody                                    413                      nothing
//	no or bad signature, stale timestamp, malformed      400                      nothing
//	  JSON, another API version, a checkout event
//	  without a session
//	event type not handled                               200                      stripe_events row (ignored)
//	session not paid yet                                 200                      stripe_events row (unpaid)
//	the event cannot be recorded (database down)         503, Retry-After: 1      nothing
//	applied, already_applied, skipped, reconciled        200                      provisionings row, ledger applied
//	in_flight, not_due, retryable, error                 503, Retry-After: delay  ledger held, released or unknown; Stripe redelivers
//	permanent, mismatch, needs_reconciliation,           200                      stripe_events row with last_disposition
//	  invalid, unprovisionable                                                      dead_letter for an operator; ledger failed,
//	                                                                                untouched or in doubt (Store.ListStuck)
//
// The statuses come from Result.Disposition: ack is 200, retry is 503
// (Stripe redelivers anything but a 2xx, for up to three days; the
// catch-up Tick takes over after that), dead-letter is 200, because no
// redelivery can help and a failing endpoint only makes Stripe retry and
// alert. Retry-After carries the disposition's delay in seconds (at least
// 1); Stripe keeps its own schedule, other senders may honour it.
func (p *Program) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	payload, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			p.reject(w, http.StatusRequestEntityTooLarge, err)
			return
		}
		p.reject(w, http.StatusBadRequest, err)
		return
	}
	ev, err := webhook.ConstructEventWithOptions(payload, r.Header.Get("Stripe-Signature"), p.secret,
		webhook.ConstructEventOptions{Tolerance: p.tolerance})
	if err != nil {
		p.reject(w, http.StatusBadRequest, err)
		return
	}
	sess, err := sessionOf(ev)
	if err != nil {
		p.reject(w, http.StatusBadRequest, err)
		return
	}
	a := p.deliver(r.Context(), ev, sess)
	if a.action != idempotency.Ack {
		p.log.LogAttrs(r.Context(), slog.LevelWarn, "checkoutwebhook: delivery not acknowledged",
			slog.String("event", ev.ID), slog.String("outcome", a.outcome), slog.String("action", a.action.String()),
			slog.Any("error", a.err))
	}
	w.Header().Set("Content-Type", "application/json")
	status := http.StatusOK
	if a.action == idempotency.Retry {
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", retryAfter(a.delay))
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"event": ev.ID, "outcome": a.outcome, "action": a.action.String()})
}

func (p *Program) reject(w http.ResponseWriter, status int, err error) {
	p.log.Warn("checkoutwebhook: request rejected", slog.Int("status", status), slog.Any("error", err))
	http.Error(w, http.StatusText(status), status)
}

// retryAfter renders a delay as Retry-After seconds, rounded up, at least 1.
func retryAfter(d time.Duration) string {
	return fmt.Sprint(max(int64((d+time.Second-1)/time.Second), 1))
}

// sessionOf returns the checkout session of a checkout event, nil for
// event types this endpoint does not handle, and an error for an event
// that is not what its type says (nothing is written for it).
func sessionOf(ev stripe.Event) (*stripe.CheckoutSession, error) {
	if ev.ID == "" {
		return nil, errors.New("checkoutwebhook: event without an id")
	}
	switch ev.Type {
	case stripe.EventTypeCheckoutSessionCompleted, stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded:
	default:
		return nil, nil
	}
	if ev.Data == nil || len(ev.Data.Raw) == 0 {
		return nil, fmt.Errorf("checkoutwebhook: %s %s without data.object", ev.Type, ev.ID)
	}
	var s stripe.CheckoutSession
	if err := json.Unmarshal(ev.Data.Raw, &s); err != nil {
		return nil, fmt.Errorf("checkoutwebhook: %s %s: %w", ev.Type, ev.ID, err)
	}
	if s.ID == "" || s.Object != "checkout.session" {
		return nil, fmt.Errorf("checkoutwebhook: %s %s: data.object is not a checkout session", ev.Type, ev.ID)
	}
	return &s, nil
}

// answer is how one delivery is answered, and what stripe_events notes.
type answer struct {
	outcome string
	action  idempotency.Action
	delay   time.Duration
	err     error
}

// deliver handles one verified delivery: it records the event, then runs
// the provisioning if the event calls for one, and notes the answer on the
// event's row.
func (p *Program) deliver(ctx context.Context, ev stripe.Event, sess *stripe.CheckoutSession) answer {
	if err := p.recordEvent(ctx, ev, sess); err != nil {
		return answer{outcome: OutcomeNotRecorded, action: idempotency.Retry, err: err}
	}
	a := p.decide(ctx, ev, sess)
	if err := p.note(ctx, ev.ID, a); err != nil {
		// The answer stands: the provisioning is recorded (or not) in the
		// ledger, which is what every redelivery consults.
		p.log.LogAttrs(ctx, slog.LevelError, "checkoutwebhook: note delivery", slog.String("event", ev.ID), slog.Any("error", err))
	}
	return a
}

func (p *Program) decide(ctx context.Context, ev stripe.Event, sess *stripe.CheckoutSession) answer {
	switch {
	case sess == nil:
		return answer{outcome: OutcomeIgnored, action: idempotency.Ack}
	case !paid(sess):
		return answer{outcome: OutcomeUnpaid, action: idempotency.Ack}
	}
	in, err := provisioningOf(ev.ID, sess)
	if err != nil {
		return answer{outcome: OutcomeUnprovisionable, action: idempotency.DeadLetter, err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	res, err := idempotency.Run(ctx, p.exec, p.effect, in)
	d := res.Disposition()
	return answer{outcome: res.Outcome.String(), action: d.Action, delay: d.Delay, err: err}
}

// recordEvent writes the event's row once per event id. It runs in its own
// statement, before the provisioning: every verified event is on record
// whatever the provisioning does in this delivery. (Inside the
// provisioning's completion transaction it would record only the event
// whose delivery provisioned, and none of a session provisioned by
// another event.)
func (p *Program) recordEvent(ctx context.Context, ev stripe.Event, sess *stripe.CheckoutSession) error {
	var (
		sessionID *string
		raw       []byte
		isPaid    bool
	)
	if sess != nil {
		sessionID, raw, isPaid = &sess.ID, ev.Data.Raw, paid(sess)
	}
	_, err := p.db.Exec(ctx, `
		INSERT INTO stripe_events (event_id, type, checkout_session_id, paid, session, stripe_created_at, received_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (event_id) DO NOTHING`,
		ev.ID, string(ev.Type), sessionID, isPaid, raw, time.Unix(ev.Created, 0), p.now())
	if err != nil {
		return fmt.Errorf("checkoutwebhook: record event %s: %w", ev.ID, err)
	}
	return nil
}

// note records how a delivery was answered on its event's row.
func (p *Program) note(ctx context.Context, eventID string, a answer) error {
	var errText *string
	if a.err != nil {
		s := a.err.Error()
		errText = &s
	}
	_, err := p.db.Exec(ctx, `
		UPDATE stripe_events SET deliveries = deliveries + 1, last_outcome = $2, last_disposition = $3,
			last_error = $4, handled_at = $5
		WHERE event_id = $1`, eventID, a.outcome, a.action.String(), errText, p.now())
	return err
}
