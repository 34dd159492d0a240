// Package gettingstarted is the service docs/getting-started.md builds, step
// by step: a welcome email sent from a queue consumer through httpeffect,
// and a Stripe referral credit given by a nightly sweep, on pgguard's
// ledger. Every Go block of the guide is a region of this package, and its
// tests run the guide's contract tests on PostgreSQL.
package gettingstarted

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/stripeeffect"
)

// snippet:gs-ledger

// NewExecutor creates or upgrades the ledger table (effect_ledger) and
// returns the executor every effect of the service runs through.
func NewExecutor(ctx context.Context, pool *pgxpool.Pool) (*idempotency.Executor, error) {
	if err := pgguard.Migrate(ctx, pool, nil); err != nil { // safe at every start-up, from every replica
		return nil, err
	}
	ledger, err := pgguard.New(pool, nil)
	if err != nil {
		return nil, err
	}
	return idempotency.NewExecutor(ledger, &idempotency.Config{Logger: slog.Default()})
}

// end snippet

// snippet:gs-keys

// Signup is a queue message: a user who just signed up.
type Signup struct {
	UserID string `json:"user_id"`
	Email  string `json:"email"`
}

// Referral is what the nightly sweep reads: a referred user who paid a
// first invoice, and whom to thank.
type Referral struct {
	ReferredUserID     string
	ReferrerCustomerID string // the Stripe customer who gets the credit
	CreditCents        int64  // the programme's terms, stored with the referral
}

var (
	welcomeKeys  = idempotency.KeySpace{Namespace: "mail.welcome", Version: 1}
	referralKeys = idempotency.KeySpace{Namespace: "billing.referral_credit", Version: 1}
)

// WelcomeKey: one welcome per user, ever.
func WelcomeKey(s Signup) (idempotency.Key, error) {
	return welcomeKeys.Key(idempotency.Str("user", s.UserID))
}

// ReferralKey: one credit per referred user, whichever night finds it.
func ReferralKey(r Referral) (idempotency.Key, error) {
	return referralKeys.Key(idempotency.Str("referred_user", r.ReferredUserID))
}

// end snippet

// snippet:gs-welcome-effect

// NewWelcomeEmail sends the welcome email through a mail API that
// deduplicates by the Idempotency-Key header for 24 hours.
func NewWelcomeEmail(endpoint, apiKey string) *idempotency.Effect[Signup, httpeffect.Response] {
	return httpeffect.Effect("mail.welcome", WelcomeKey,
		func(ctx context.Context, s Signup) (*http.Request, error) { // called for every attempt
			body, err := json.Marshal(map[string]string{"to": s.Email, "template": "welcome"})
			if err != nil {
				return nil, err
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
			if err != nil {
				return nil, err
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+apiKey)
			return req, nil
		},
		nil) // the defaults for a receiver that deduplicates by key for 24 hours
}

// end snippet

// snippet:gs-referral-effect

// NewReferralCredit credits the referrer's Stripe balance.
func NewReferralCredit(api *client.API) *idempotency.Effect[Referral, stripeeffect.CreditResult] {
	credit := stripeeffect.CreditEffect(api, "billing.referral_credit", ReferralKey,
		func(r Referral) stripeeffect.Credit {
			return stripeeffect.Credit{Customer: r.ReferrerCustomerID, Amount: r.CreditCents, Currency: "usd",
				Description: "Thank you for referring a friend"}
		})
	credit.OnComplete = pgguard.OnComplete(recordReferralCredit) // the domain row, below
	return credit
}

// end snippet

// snippet:gs-consumer

// Message is one delivery from your broker (SQS, RabbitMQ, a job table).
type Message interface {
	Body() []byte
	Ack() error
	Nack(delay time.Duration) error // redeliver after delay; zero: the broker's own backoff
	DeadLetter(reason string) error
}

// HandleSignup is the queue consumer's handler: one Run per delivery,
// settled by the run's disposition, never by err == nil.
func HandleSignup(ctx context.Context, exec *idempotency.Executor, welcome *idempotency.Effect[Signup, httpeffect.Response], msg Message) error {
	var s Signup
	if err := json.Unmarshal(msg.Body(), &s); err != nil {
		return msg.DeadLetter("not a signup: " + err.Error())
	}
	res, err := idempotency.Run(ctx, exec, welcome, s)
	switch d := res.Disposition(); d.Action {
	case idempotency.Ack:
		return msg.Ack()
	case idempotency.Retry:
		return msg.Nack(d.Delay)
	default: // idempotency.DeadLetter
		return msg.DeadLetter(fmt.Sprintf("%v: %v", res.Outcome, err))
	}
}

// end snippet

// snippet:gs-sweep

// CreditReferrals is the nightly cron job.
func CreditReferrals(ctx context.Context, db *pgxpool.Pool, exec *idempotency.Executor,
	credit *idempotency.Effect[Referral, stripeeffect.CreditResult]) (sweep.Report, error) {
	due, err := DueReferrals(ctx, db) // your query: paid referrals without a credited row
	if err != nil {
		return sweep.Report{}, err
	}
	report, err := sweep.Run(ctx, exec, credit, sweep.Slice(due), &sweep.Config{Concurrency: 4})
	slog.InfoContext(ctx, "referral credits", "report", report.String())
	return report, err
}

// end snippet

// Schema is the rest of the service's migration: the referrals it reads.
const Schema = `
CREATE TABLE referrals (
	referred_user_id     text   PRIMARY KEY,
	referrer_customer_id text   NOT NULL,
	credit_cents         bigint NOT NULL,
	first_paid_at        timestamptz
);`

// DueReferrals returns the paid referrals without a credited row. The
// ledger, not this query, keeps a credit from happening twice: the query
// only keeps finished work out of the sweep.
func DueReferrals(ctx context.Context, db *pgxpool.Pool) ([]Referral, error) {
	rows, err := db.Query(ctx, `
		SELECT r.referred_user_id, r.referrer_customer_id, r.credit_cents
		FROM referrals r
		WHERE r.first_paid_at IS NOT NULL
		  AND NOT EXISTS (SELECT FROM referral_credits c
		                  WHERE c.referred_user_id = r.referred_user_id AND c.status IN ('credited'))
		ORDER BY r.referred_user_id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Referral, error) {
		var r Referral
		err := row.Scan(&r.ReferredUserID, &r.ReferrerCustomerID, &r.CreditCents)
		return r, err
	})
}

// snippet:gs-domain-row

// ReferralCreditsSQL is the domain table's migration: at most one credited
// row per referred user.
const ReferralCreditsSQL = `
CREATE TABLE referral_credits (
	referred_user_id text   NOT NULL,
	stripe_txn_id    text   NOT NULL,
	amount_cents     bigint NOT NULL,
	status           text   NOT NULL CHECK (status IN ('credited', 'revoked'))
);
CREATE UNIQUE INDEX uq_referral_credits_active ON referral_credits (referred_user_id)
	WHERE status IN ('credited');`

// ReferralCredits describes that index to pgguard and guardtest.
var ReferralCredits = pgguard.Guard{
	Table:          "referral_credits",
	Columns:        []string{"referred_user_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"credited"},
	IndexName:      "uq_referral_credits_active",
}

// recordReferralCredit runs in the transaction that records the credit
// applied: the row and the ledger's record commit together, or neither does.
func recordReferralCredit(ctx context.Context, tx pgx.Tx, r Referral, c stripeeffect.CreditResult) error {
	_, err := pgguard.InsertOnce(ctx, tx, ReferralCredits,
		`INSERT INTO referral_credits (referred_user_id, stripe_txn_id, amount_cents, status) VALUES ($1, $2, $3, 'credited')`,
		r.ReferredUserID, c.ID, c.Amount)
	return err
}

// end snippet
