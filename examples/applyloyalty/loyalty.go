package applyloyalty

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

// Schema is the example's migration: subscriptions, loyalty_discounts and
// its partial unique index. Teams copy it into their own migrations.
//
//go:embed schema.sql
var Schema string

// Guard describes loyalty_discounts' partial unique index: one active
// discount per user; revoked rows are exempt.
var Guard = pgguard.Guard{
	Table:          "loyalty_discounts",
	Columns:        []string{"user_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"applied", "skipped"},
	IndexName:      "uq_loyalty_discounts_active",
}

// MilestoneMonths is the anniversary that earns the bonus.
const MilestoneMonths = 12

// Keys is the key space of the anniversary effect. Version 1 keys are
// user + subscription + milestone: the subscription is the lifecycle
// identity, so a user who cancels and resubscribes earns a fresh code
// (with the old key Stripe would replay the revoked code for 24 hours).
var Keys = idempotency.KeySpace{Namespace: "loyalty.anniversary", Version: 1}

// Candidate is one subscriber who may be owed the bonus. Every field comes
// from the database: nothing here is read from the clock.
type Candidate struct {
	UserID         string
	SubscriptionID string
	CustomerID     string
	Milestone      int64 // months: MilestoneMonths
}

// Key is the candidate's idempotency key.
func Key(c Candidate) (idempotency.Key, error) {
	return Keys.Key(
		idempotency.Str("user", c.UserID),
		idempotency.Str("sub", c.SubscriptionID),
		idempotency.Int("milestone", c.Milestone),
	)
}

// Migrate creates the example's tables and the effect ledger.
func Migrate(ctx context.Context, db pgguard.DBTX) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("applyloyalty: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// Config wires the program. DB, Stripe and Coupon are required.
type Config struct {
	DB     *pgxpool.Pool
	Stripe *client.API // build it with stripeeffect.NewAPI
	Coupon string      // the 10% anniversary coupon
	// Now is the ledger's clock; nil means the database clock. Tests pass
	// a fake clock to expire leases without sleeping.
	Now func() time.Time
	// Sweep tunes the tick's sweep (batch size, concurrency, rate limit).
	Sweep *sweep.Config
}

// Program is the anniversary job.
type Program struct {
	db     *pgxpool.Pool
	api    *client.API
	ledger *pgguard.Store
	exec   *idempotency.Executor
	effect *idempotency.Effect[Candidate, stripeeffect.PromotionCodeResult]
	sweep  *sweep.Config

	// beforeRecord, when set (tests only), runs inside the completion
	// transaction before the domain row is written: returning an error
	// simulates a crash after Stripe created the code.
	beforeRecord func(Candidate) error
}

// New returns the program.
func New(cfg Config) (*Program, error) {
	if cfg.DB == nil || cfg.Stripe == nil || cfg.Coupon == "" {
		return nil, errors.New("applyloyalty: Config needs DB, Stripe and Coupon")
	}
	ledger, err := pgguard.New(cfg.DB, &pgguard.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	exec, err := idempotency.NewExecutor(ledger, &idempotency.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	p := &Program{db: cfg.DB, api: cfg.Stripe, ledger: ledger, exec: exec, sweep: cfg.Sweep}
	p.effect = stripeeffect.PromotionCodeEffect(cfg.Stripe, "loyalty.anniversary", Key,
		func(c Candidate) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{
				Coupon:   cfg.Coupon,
				Customer: c.CustomerID,
				Metadata: map[string]string{"user_id": c.UserID, "subscription_id": c.SubscriptionID},
			}
		})
	p.effect.OnComplete = pgguard.OnComplete(p.record)
	return p, nil
}

// Effect returns the anniversary effect, for contract tests.
func (p *Program) Effect() *idempotency.Effect[Candidate, stripeeffect.PromotionCodeResult] {
	return p.effect
}

// Executor returns the program's executor.
func (p *Program) Executor() *idempotency.Executor { return p.exec }

// record writes the domain row in the transaction that marks the effect
// applied. The insert collapses a 23505 on uq_loyalty_discounts_active into
// "already there" and leaves every other error alone.
func (p *Program) record(ctx context.Context, tx pgx.Tx, c Candidate, promo stripeeffect.PromotionCodeResult) error {
	if p.beforeRecord != nil {
		if err := p.beforeRecord(c); err != nil {
			return err
		}
	}
	key, err := Key(c)
	if err != nil {
		return err
	}
	_, err = pgguard.InsertOnce(ctx, tx, Guard,
		`INSERT INTO loyalty_discounts (user_id, subscription_id, milestone, promotion_code_id, code, status, idempotency_key)
		 VALUES ($1, $2, $3, $4, $5, 'applied', $6)`,
		c.UserID, c.SubscriptionID, c.Milestone, promo.ID, promo.Code, key.String())
	return err
}

// Candidates returns the Pro subscribers whose subscription had completed
// MilestoneMonths at asOf and who hold no active loyalty discount. asOf
// only selects candidates; keys never depend on it.
func (p *Program) Candidates(ctx context.Context, asOf time.Time) ([]Candidate, error) {
	rows, err := p.db.Query(ctx, `
		SELECT s.user_id, s.id, s.customer_id
		FROM subscriptions s
		WHERE s.plan = 'pro'
		  AND s.cancelled_at IS NULL
		  AND s.started_at <= $1::timestamptz - make_interval(months => $2)
		  AND NOT EXISTS (
		      SELECT 1 FROM loyalty_discounts d
		      WHERE d.user_id = s.user_id AND d.status IN ('applied', 'skipped'))
		ORDER BY s.user_id, s.id`, asOf, MilestoneMonths)
	if err != nil {
		return nil, fmt.Errorf("applyloyalty: candidates: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Candidate, error) {
		c := Candidate{Milestone: MilestoneMonths}
		return c, r.Scan(&c.UserID, &c.SubscriptionID, &c.CustomerID)
	})
}

// Tick is one run of the cron job: find the candidates at asOf and sweep
// them through the effect. Overlapping ticks are safe: the sweep
// pre-flights the ledger in batches, and the claim stops the second tick
// before it calls Stripe.
func (p *Program) Tick(ctx context.Context, asOf time.Time) (sweep.Report, error) {
	cands, err := p.Candidates(ctx, asOf)
	if err != nil {
		return sweep.Report{}, err
	}
	return sweep.Run(ctx, p.exec, p.effect, sweep.Slice(cands), p.sweep)
}

// revokeKeys is the key space of the revocation (deactivating the code).
var revokeKeys = idempotency.KeySpace{Namespace: "loyalty.revoke", Version: 1}

// Revoke undoes a user's active loyalty discount (the subscription was
// cancelled): it deactivates the promotion code at Stripe under its own
// idempotency key, then, in one transaction, marks the domain row revoked
// and the ledger record revoked, which frees the user for a new
// subscription's code. It returns pgx.ErrNoRows if the user has none. A
// row written before the ledger existed (by the old clock-keyed job) has no
// ledger record; the row alone is revoked.
func (p *Program) Revoke(ctx context.Context, userID, reason string) error {
	var promoID, key string
	err := p.db.QueryRow(ctx, `
		SELECT promotion_code_id, idempotency_key FROM loyalty_discounts
		WHERE user_id = $1 AND status IN ('applied', 'skipped')`, userID).Scan(&promoID, &key)
	if err != nil {
		return fmt.Errorf("applyloyalty: revoke %s: %w", userID, err)
	}
	rk, err := revokeKeys.Key(idempotency.Str("promo", promoID))
	if err != nil {
		return err
	}
	if _, err := stripeeffect.DeactivatePromotionCode(ctx, p.api, rk, promoID); err != nil {
		return fmt.Errorf("applyloyalty: revoke %s: %w", userID, err)
	}
	return pgx.BeginFunc(ctx, p.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			UPDATE loyalty_discounts SET status = 'revoked', revoked_at = now()
			WHERE user_id = $1 AND status IN ('applied', 'skipped')`, userID); err != nil {
			return err
		}
		ledger, err := p.ledger.WithDB(tx)
		if err != nil {
			return err
		}
		_, err = ledger.Revoke(ctx, key, reason)
		if errors.Is(err, idempotency.ErrNotFound) {
			return nil // a row from before the ledger: nothing to revoke there
		}
		return err
	})
}
