package orderrefund

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/stripeeffect"
)

// Schema is the example's migration: orders, refund_requests, refunds and
// its partial unique index. Teams copy it into their own migrations.
//
//go:embed schema.sql
var Schema string

// Guard describes refunds' partial unique index: one active (reserved,
// pending or succeeded) refund per refund request; failed rows are exempt.
var Guard = pgguard.Guard{
	Table:          "refunds",
	Columns:        []string{"refund_request_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"reserved", "pending", "succeeded"},
	IndexName:      "uq_refunds_active",
}

// ErrExceedsPaid: the request would take the order's active refunds past
// the amount paid. It is returned classified permanent, a failed refunds
// row records it, and nothing is sent to Stripe.
var ErrExceedsPaid = errors.New("orderrefund: refunds would exceed the amount paid")

// Keys is the key space of the refund. Version 1 keys are order + refund
// request: one key per refund the business means to make, so a second
// partial refund on an order is a new refund, never a replay of the first.
var Keys = idempotency.KeySpace{Namespace: "orderrefund.refund", Version: 1}

// Request is one refund request with what Stripe needs, read from the
// database. Its fields are in the order of requestSQL's columns.
type Request struct {
	RequestID     string
	OrderID       string
	PaymentIntent string
	AmountCents   int64 // in the fingerprint: the same request with another amount is refused
	Currency      string
	Reason        string // Stripe's: duplicate, fraudulent, requested_by_customer
}

// Key is the request's idempotency key.
func Key(r Request) (idempotency.Key, error) {
	return Keys.Key(idempotency.Str("order", r.OrderID), idempotency.Str("request", r.RequestID))
}

// Migrate creates the example's tables and the effect ledger.
func Migrate(ctx context.Context, db pgguard.DBTX) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("orderrefund: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// Config wires the program. DB and Stripe are required.
type Config struct {
	DB     *pgxpool.Pool
	Stripe *client.API // build it with stripeeffect.NewAPI
	// Now is the ledger's clock; nil means the database clock. Tests pass
	// a fake clock to expire leases without sleeping.
	Now func() time.Time
	// Sweep tunes the tick's sweep (batch size, concurrency, rate limit).
	Sweep *sweep.Config
}

// Program issues the refunds.
type Program struct {
	db     *pgxpool.Pool
	exec   *idempotency.Executor
	effect *idempotency.Effect[Request, stripeeffect.RefundResult]
	sweep  *sweep.Config
}

// New returns the program.
func New(cfg Config) (*Program, error) {
	if cfg.DB == nil || cfg.Stripe == nil {
		return nil, errors.New("orderrefund: Config needs DB and Stripe")
	}
	ledger, err := pgguard.New(cfg.DB, &pgguard.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	exec, err := idempotency.NewExecutor(ledger, &idempotency.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	p := &Program{db: cfg.DB, exec: exec, sweep: cfg.Sweep}
	// Fingerprint is the JSON of this stripeeffect.Refund: the amount is in it.
	p.effect = stripeeffect.RefundEffect(cfg.Stripe, Keys.Namespace, Key, func(r Request) stripeeffect.Refund {
		return stripeeffect.Refund{
			PaymentIntent: r.PaymentIntent,
			Amount:        r.AmountCents,
			Reason:        r.Reason,
			Metadata:      map[string]string{"order_id": r.OrderID, "refund_request_id": r.RequestID},
		}
	})
	refund := p.effect.Call
	p.effect.Call = func(ctx context.Context, key idempotency.Key, r Request) (stripeeffect.RefundResult, error) {
		return p.call(ctx, key, r, refund)
	}
	p.effect.OnComplete = pgguard.OnComplete(p.record)
	return p, nil
}

// Effect returns the refund effect, for contract tests and ad hoc sweeps.
func (p *Program) Effect() *idempotency.Effect[Request, stripeeffect.RefundResult] { return p.effect }

// Executor returns the program's executor; its Store is the ledger.
func (p *Program) Executor() *idempotency.Executor { return p.exec }

// call is the effect's Call, run by every attempt (in-run retries and
// takeovers included): reserve the amount, ask Stripe under the key, and
// free the reservation if Stripe refuses.
func (p *Program) call(ctx context.Context, key idempotency.Key, r Request,
	refund func(context.Context, idempotency.Key, Request) (stripeeffect.RefundResult, error),
) (stripeeffect.RefundResult, error) {
	done, err := p.reserve(ctx, key, r)
	switch {
	case err != nil:
		return stripeeffect.RefundResult{}, err
	case done != nil:
		return *done, nil
	}
	res, err := refund(ctx, key, r)
	if class, _ := idempotency.Classify(err); class == idempotency.ClassPermanent {
		// Stripe refused (amount_too_large after a refund made in the
		// dashboard, a disputed charge): nothing was refunded. On any
		// other failure the outcome is unknown and the amount stays held.
		if ferr := p.fail(context.WithoutCancel(ctx), r, err.Error()); ferr != nil {
			// Unclassified, so retryable: the next run asks Stripe again,
			// is refused again, and frees the amount then.
			return res, fmt.Errorf("%v; freeing the reservation: %w", err, ferr)
		}
	}
	return res, err
}

// activeRefund is one active refunds row of an order.
type activeRefund struct {
	RequestID string
	Amount    int64
	Status    string
	StripeID  string
	Key       string
}

// reserve holds r's amount on its order in a short transaction that
// commits before Stripe is called: no lock is held across the call.
//
//  1. Lock the order row. FOR NO KEY UPDATE conflicts with itself, so the
//     reservations of one order queue here and two requests can never both
//     see room that only one of them fits in; it does not block the
//     foreign-key checks of new refund requests.
//  2. Read the order's active refunds in a second statement. Under READ
//     COMMITTED each statement has its own snapshot, so this one sees a
//     reservation committed while we waited for the lock; a sum inside the
//     locking statement would not.
//  3. This request's own active row: if it holds a Stripe refund, the
//     refund is done; return it and call nothing. Otherwise an earlier
//     attempt under the same key reserved it (a crash, a lost response):
//     go on, and Stripe replays. Under another key (a key that changed
//     between deliveries) Stripe cannot deduplicate: park it, call nothing.
//  4. No room: record a failed row and refuse, permanently.
//  5. Room: insert the reservation. The partial unique index is the last
//     word: if it refuses a duplicate (which the lock makes impossible),
//     nothing is sent and the next run reads the row that won (step 3).
func (p *Program) reserve(ctx context.Context, key idempotency.Key, r Request) (*stripeeffect.RefundResult, error) {
	var done *stripeeffect.RefundResult
	var refused error
	err := pgx.BeginFunc(ctx, p.db, func(tx pgx.Tx) error {
		var paid int64
		if err := tx.QueryRow(ctx, `SELECT amount_paid_cents FROM orders WHERE id = $1 FOR NO KEY UPDATE`,
			r.OrderID).Scan(&paid); err != nil {
			return fmt.Errorf("orderrefund: lock order %s: %w", r.OrderID, err)
		}
		rows, _ := tx.Query(ctx, `
			SELECT refund_request_id, amount_cents, status, coalesce(stripe_refund_id, ''), idempotency_key
			FROM refunds WHERE order_id = $1 AND status IN ('reserved', 'pending', 'succeeded')`, r.OrderID)
		active, err := pgx.CollectRows(rows, pgx.RowToStructByPos[activeRefund])
		if err != nil {
			return fmt.Errorf("orderrefund: refunds of order %s: %w", r.OrderID, err)
		}
		var held int64
		for _, a := range active {
			switch {
			case a.RequestID != r.RequestID:
				held += a.Amount
				continue
			case a.Amount != r.AmountCents:
				// The ledger's fingerprint catches this first; this guards
				// a ledger record lost or settled by hand.
				return idempotency.Mismatch(fmt.Errorf("orderrefund: request %s holds %d, asks %d", r.RequestID, a.Amount, r.AmountCents))
			case a.StripeID != "":
				done = &stripeeffect.RefundResult{ID: a.StripeID, PaymentIntent: r.PaymentIntent,
					Amount: a.Amount, Currency: r.Currency, Status: a.Status}
			case a.Key != key.String():
				return idempotency.Reconcile(fmt.Errorf("orderrefund: request %s is reserved under another key", r.RequestID))
			}
			return nil
		}
		if held+r.AmountCents > paid {
			refused = fmt.Errorf("%w: request %s asks %d, order %s has %d of %d %s left",
				ErrExceedsPaid, r.RequestID, r.AmountCents, r.OrderID, paid-held, paid, r.Currency)
			_, err := tx.Exec(ctx, `
				INSERT INTO refunds (order_id, refund_request_id, amount_cents, currency, status, failure_reason, idempotency_key)
				VALUES ($1, $2, $3, $4, 'failed', $5, $6)`,
				r.OrderID, r.RequestID, r.AmountCents, r.Currency, refused.Error(), key.String())
			return err
		}
		ins, err := pgguard.InsertOnce(ctx, tx, Guard, `
			INSERT INTO refunds (order_id, refund_request_id, amount_cents, currency, status, idempotency_key)
			VALUES ($1, $2, $3, $4, 'reserved', $5)`,
			r.OrderID, r.RequestID, r.AmountCents, r.Currency, key.String())
		if err == nil && !ins.Inserted {
			err = idempotency.NotActed(fmt.Errorf("orderrefund: request %s was reserved concurrently", r.RequestID), 0)
		}
		return err
	})
	switch {
	case err != nil:
		return nil, err
	case refused != nil:
		return nil, idempotency.Permanent(refused)
	}
	return done, nil
}

// fail marks r's reservation failed, which frees its amount.
func (p *Program) fail(ctx context.Context, r Request, reason string) error {
	_, err := p.db.Exec(ctx, `
		UPDATE refunds SET status = 'failed', failure_reason = $2, updated_at = now()
		WHERE refund_request_id = $1 AND status = 'reserved'`, r.RequestID, reason)
	return err
}

// record turns the reservation into the refund Stripe made, in the
// transaction that marks the effect applied. Stripe's later status changes
// (refund.updated webhooks: pending to succeeded or failed) are not shown.
func (p *Program) record(ctx context.Context, tx pgx.Tx, r Request, rf stripeeffect.RefundResult) error {
	status := "pending"
	if rf.Status == "succeeded" {
		status = "succeeded"
	}
	tag, err := tx.Exec(ctx, `
		UPDATE refunds SET status = $2, stripe_refund_id = $3, updated_at = now()
		WHERE refund_request_id = $1 AND status IN ('reserved', 'pending', 'succeeded')
		  AND coalesce(stripe_refund_id, $3) = $3`, r.RequestID, status, rf.ID)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("orderrefund: request %s has no reservation for Stripe refund %s", r.RequestID, rf.ID)
	}
	return nil
}

const requestSQL = `
	SELECT r.id, r.order_id, o.payment_intent_id, r.amount_cents, o.currency, r.reason
	FROM refund_requests r JOIN orders o ON o.id = r.order_id`

// Refund issues the refund of one request: the queue's (or webhook's)
// path, delivered at least once. A redelivery returns the refund already
// made (OutcomeAlreadyApplied) without calling Stripe; the same request
// with another amount is a *idempotency.MismatchError, and Stripe is not
// called. The error wraps pgx.ErrNoRows for an unknown request.
func (p *Program) Refund(ctx context.Context, requestID string) (idempotency.Result[stripeeffect.RefundResult], error) {
	rows, _ := p.db.Query(ctx, requestSQL+` WHERE r.id = $1`, requestID)
	r, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Request])
	if err != nil {
		return idempotency.Result[stripeeffect.RefundResult]{}, fmt.Errorf("orderrefund: refund request %s: %w", requestID, err)
	}
	return idempotency.Run(ctx, p.exec, p.effect, r)
}

// Candidates returns the requests that have no refund yet: no row, or only
// a reservation whose outcome is unknown (a lost response, a crash). A
// failed row keeps its request out: support files a new request, or calls
// Refund on purpose.
func (p *Program) Candidates(ctx context.Context) ([]Request, error) {
	rows, _ := p.db.Query(ctx, requestSQL+`
		WHERE NOT EXISTS (SELECT 1 FROM refunds f WHERE f.refund_request_id = r.id AND f.status <> 'reserved')
		ORDER BY r.requested_at, r.id`)
	reqs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Request])
	if err != nil {
		return nil, fmt.Errorf("orderrefund: candidates: %w", err)
	}
	return reqs, nil
}

// Tick sweeps the candidates through the effect: the safety net behind the
// queue. Overlapping ticks, and a tick racing the queue, are safe: the
// sweep pre-flights the ledger in batches, and the claim stops the second
// worker before it calls Stripe.
func (p *Program) Tick(ctx context.Context) (sweep.Report, error) {
	reqs, err := p.Candidates(ctx)
	if err != nil {
		return sweep.Report{}, err
	}
	return sweep.Run(ctx, p.exec, p.effect, sweep.Slice(reqs), p.sweep)
}
