package checkoutwebhook

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
)

// Schema is the example's migration: stripe_events, provisionings and its
// partial unique index.
//
//go:embed schema.sql
var Schema string

// Guard describes provisionings' partial unique index: one provisioned
// row per checkout session; failed and revoked rows are exempt.
var Guard = pgguard.Guard{
	Table:          "provisionings",
	Columns:        []string{"checkout_session_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"provisioned"},
	IndexName:      "uq_provisionings_active",
}

// Keys is the key space of the provisioning. Version 1 keys are the
// checkout session id: every event about one checkout shares it, and no
// event id is in it.
var Keys = idempotency.KeySpace{Namespace: "checkout.provision", Version: 1}

// DedupWindow is how long the license service remembers an
// Idempotency-Key and replays its first answer: 24 hours, as its
// documentation says. Stripe retries a webhook for up to three days, so a
// provisioning whose grant may have been made is retried under the same
// key only inside this window; past it, it is parked for an operator.
const DedupWindow = 24 * time.Hour

// Lease is how long a provisioning's claim is held: above the delivery's
// Timeout, so that a delivery Stripe gave up on is still in flight for
// Stripe's next attempt, not taken over under it.
const Lease = time.Minute

// Defaults of Config's fields.
const (
	// DefaultMaxBody bounds a webhook's body. Stripe's event payloads are
	// far smaller.
	DefaultMaxBody = 512 << 10
	// DefaultTimeout bounds the provisioning of one delivery. Stripe
	// expects a quick answer and treats a slow one as failed, then
	// redelivers: the claim makes that redelivery in flight, never a
	// second grant.
	DefaultTimeout = 15 * time.Second
)

// Provisioning is what a paid checkout session grants: the effect's input.
// It comes from the session in a verified event.
type Provisioning struct {
	SessionID string
	AccountID string // the session's client_reference_id: our account
	Plan      string // metadata "plan"
	Seats     int64  // metadata "seats", 1 when absent
	// EventID is the event whose delivery runs the provisioning. It is
	// recorded on the provisionings row and is in neither the key nor the
	// payload: two events for one session are one intent.
	EventID string
}

// Key is the provisioning's idempotency key: the checkout session.
func Key(p Provisioning) (idempotency.Key, error) {
	return Keys.Key(idempotency.Str("checkout_session", p.SessionID))
}

// Grant is the license service's request body: POST, JSON, with the key in
// the Idempotency-Key header. It answers {"id": "lic_..."}.
type Grant struct {
	Account         string `json:"account"`
	Plan            string `json:"plan"`
	Seats           int64  `json:"seats"`
	CheckoutSession string `json:"checkout_session"`
}

func grantOf(p Provisioning) Grant {
	return Grant{Account: p.AccountID, Plan: p.Plan, Seats: p.Seats, CheckoutSession: p.SessionID}
}

// errUnprovisionable: a paid session without what a provisioning needs.
var errUnprovisionable = errors.New("checkoutwebhook: session cannot be provisioned")

// provisioningOf reads a provisioning from a checkout session.
func provisioningOf(eventID string, s *stripe.CheckoutSession) (Provisioning, error) {
	p := Provisioning{SessionID: s.ID, AccountID: s.ClientReferenceID, Plan: s.Metadata["plan"], Seats: 1, EventID: eventID}
	if v, ok := s.Metadata["seats"]; ok {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < 1 {
			return Provisioning{}, fmt.Errorf("%w: metadata seats %q", errUnprovisionable, v)
		}
		p.Seats = n
	}
	if p.AccountID == "" || p.Plan == "" {
		return Provisioning{}, fmt.Errorf("%w: no client_reference_id or plan", errUnprovisionable)
	}
	return p, nil
}

// paid reports whether the session in an event has been paid for.
func paid(s *stripe.CheckoutSession) bool {
	return s.PaymentStatus == stripe.CheckoutSessionPaymentStatusPaid ||
		s.PaymentStatus == stripe.CheckoutSessionPaymentStatusNoPaymentRequired
}

// Migrate creates the example's tables and the effect ledger.
func Migrate(ctx context.Context, db pgguard.DBTX) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("checkoutwebhook: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// Config wires the endpoint. DB, WebhookSecret and LicenseURL are
// required.
type Config struct {
	DB *pgxpool.Pool
	// WebhookSecret is the endpoint's signing secret (whsec_...).
	WebhookSecret string
	// Tolerance is how old a signature's timestamp may be. Zero means
	// webhook.DefaultTolerance (5 minutes).
	Tolerance time.Duration
	// LicenseURL is the license service's grant endpoint.
	LicenseURL string
	APIKey     string // sent to the license service as a bearer token
	// MaxBody bounds a webhook's body. Zero means DefaultMaxBody.
	MaxBody int64
	// Timeout bounds the provisioning of one delivery. Zero means
	// DefaultTimeout. It must be below Lease.
	Timeout time.Duration
	// Client sends the license requests; nil means httpeffect's default
	// (10s timeout, no redirects).
	Client *http.Client
	// Now is the ledger's and the executor's clock; nil means the
	// database's and time.Now. (Signature timestamps are always checked
	// against the real clock, by stripe-go.)
	Now func() time.Time
	// Sleep waits between in-run attempts (idempotency.Config.Sleep); nil
	// means a timer.
	Sleep func(ctx context.Context, d time.Duration) error
	// Logger receives one record per rejected request and per delivery
	// that is not acknowledged. Nil means no logging.
	Logger *slog.Logger
	// Sweep tunes the catch-up tick's sweep.
	Sweep *sweep.Config
}

// Program is the webhook endpoint (an http.Handler) and its catch-up tick.
type Program struct {
	db         *pgxpool.Pool
	secret     string
	tolerance  time.Duration
	licenseURL string
	apiKey     string
	maxBody    int64
	timeout    time.Duration
	now        func() time.Time
	log        *slog.Logger
	exec       *idempotency.Executor
	effect     *idempotency.Effect[Provisioning, httpeffect.Response]
	sweep      *sweep.Config

	// beforeRecord, when set (tests only), runs inside the completion
	// transaction before the provisioning row is written: returning an
	// error simulates a crash after the license was granted.
	beforeRecord func(Provisioning) error
}

// New returns the endpoint.
func New(cfg Config) (*Program, error) {
	if cfg.DB == nil || cfg.WebhookSecret == "" || cfg.LicenseURL == "" {
		return nil, errors.New("checkoutwebhook: Config needs DB, WebhookSecret and LicenseURL")
	}
	if u, err := url.Parse(cfg.LicenseURL); err != nil || !u.IsAbs() {
		return nil, fmt.Errorf("checkoutwebhook: LicenseURL %q is not an absolute URL", cfg.LicenseURL)
	}
	p := &Program{db: cfg.DB, secret: cfg.WebhookSecret, tolerance: cfg.Tolerance, licenseURL: cfg.LicenseURL,
		apiKey: cfg.APIKey, maxBody: cfg.MaxBody, timeout: cfg.Timeout, now: cfg.Now, log: cfg.Logger, sweep: cfg.Sweep}
	if p.tolerance == 0 {
		p.tolerance = webhook.DefaultTolerance
	}
	if p.maxBody == 0 {
		p.maxBody = DefaultMaxBody
	}
	if p.timeout == 0 {
		p.timeout = DefaultTimeout
	}
	if p.tolerance < 0 || p.maxBody < 0 || p.timeout < 0 || p.timeout >= Lease {
		return nil, fmt.Errorf("checkoutwebhook: Tolerance, MaxBody and Timeout must be positive, Timeout below %v", Lease)
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	ledger, err := pgguard.New(cfg.DB, &pgguard.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	if p.exec, err = idempotency.NewExecutor(ledger, &idempotency.Config{Now: cfg.Now, Sleep: cfg.Sleep}); err != nil {
		return nil, err
	}
	// httpeffect's defaults for a receiver that deduplicates by
	// Idempotency-Key: ExpiredRetry within a 24-hour DedupWindow, the
	// request (method, URL, body) as the fingerprint. The body is the
	// grant, built from the session only: the event id is not in it, so
	// two events for one session are the same payload.
	eff := httpeffect.Effect(Keys.Namespace, Key, p.request, &httpeffect.Config{Client: cfg.Client, DedupWindow: DedupWindow})
	eff.Lease = Lease
	eff.OnComplete = pgguard.OnComplete(p.record)
	eff.OnFail = pgguard.OnFail(p.recordRefusal)
	p.effect = eff
	return p, nil
}

// Effect returns the provisioning effect, for contract tests and ad hoc
// sweeps.
func (p *Program) Effect() *idempotency.Effect[Provisioning, httpeffect.Response] { return p.effect }

// Executor returns the program's executor; its Store is the ledger.
func (p *Program) Executor() *idempotency.Executor { return p.exec }

// request is httpeffect's build function, called for every attempt.
func (p *Program) request(ctx context.Context, in Provisioning) (*http.Request, error) {
	body, err := json.Marshal(grantOf(in))
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.licenseURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if p.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
	return req, nil
}

// record writes the provisioning row in the transaction that marks the
// effect applied. A 23505 on uq_provisionings_active means "already
// there".
func (p *Program) record(ctx context.Context, tx pgx.Tx, in Provisioning, resp httpeffect.Response) error {
	if p.beforeRecord != nil {
		if err := p.beforeRecord(in); err != nil {
			return err
		}
	}
	key, err := Key(in)
	if err != nil {
		return err
	}
	var license struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(resp.Body, &license) // no id in the answer: license_id stays NULL
	_, err = pgguard.InsertOnce(ctx, tx, Guard, `
		INSERT INTO provisionings (checkout_session_id, status, account_id, plan, seats, license_id, event_id, idempotency_key)
		VALUES ($1, 'provisioned', $2, $3, $4, NULLIF($5, ''), $6, $7)`,
		in.SessionID, in.AccountID, in.Plan, in.Seats, license.ID, in.EventID, key.String())
	return err
}

// recordRefusal writes a failed provisioning row when the license service
// refused (a 4xx), in the transaction that marks the ledger record failed.
func (p *Program) recordRefusal(ctx context.Context, tx pgx.Tx, in Provisioning, cause error) error {
	key, err := Key(in)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO provisionings (checkout_session_id, status, account_id, plan, seats, event_id, idempotency_key, reason)
		VALUES ($1, 'failed', $2, $3, $4, $5, $6, $7)`,
		in.SessionID, in.AccountID, in.Plan, in.Seats, in.EventID, key.String(), cause.Error()); err != nil {
		return fmt.Errorf("checkoutwebhook: record refusal of %s: %w", in.SessionID, err)
	}
	return nil
}

// Candidates returns, for the catch-up tick, the paid sessions some
// recorded event announced and that have no provisionings row: Stripe
// stopped redelivering before one of its deliveries was acknowledged.
// Each comes from the session's earliest paid event.
func (p *Program) Candidates(ctx context.Context) ([]Provisioning, error) {
	rows, err := p.db.Query(ctx, `
		SELECT DISTINCT ON (e.checkout_session_id) e.event_id, e.session
		FROM stripe_events e
		WHERE e.paid
		  AND NOT EXISTS (SELECT 1 FROM provisionings pr WHERE pr.checkout_session_id = e.checkout_session_id)
		ORDER BY e.checkout_session_id, e.stripe_created_at, e.event_id`)
	if err != nil {
		return nil, fmt.Errorf("checkoutwebhook: candidates: %w", err)
	}
	type stored struct {
		EventID string
		Session []byte
	}
	events, err := pgx.CollectRows(rows, pgx.RowToStructByPos[stored])
	if err != nil {
		return nil, fmt.Errorf("checkoutwebhook: candidates: %w", err)
	}
	out := make([]Provisioning, 0, len(events))
	for _, e := range events {
		var s stripe.CheckoutSession
		if err := json.Unmarshal(e.Session, &s); err != nil {
			return nil, fmt.Errorf("checkoutwebhook: candidates: event %s: %w", e.EventID, err)
		}
		in, err := provisioningOf(e.EventID, &s)
		if err != nil {
			continue // dead-lettered when it was delivered
		}
		out = append(out, in)
	}
	return out, nil
}

// Tick is the catch-up job: it provisions the paid sessions whose
// deliveries Stripe gave up on. It shares the key with the handler, so
// however they overlap, one grant per session.
func (p *Program) Tick(ctx context.Context) (sweep.Report, error) {
	cands, err := p.Candidates(ctx)
	if err != nil {
		return sweep.Report{}, err
	}
	return sweep.Run(ctx, p.exec, p.effect, sweep.Slice(cands), p.sweep)
}
