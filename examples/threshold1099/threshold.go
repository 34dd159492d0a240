package threshold1099

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
)

// Schema is the example's migration: payees, payouts (with their tax year),
// threshold_notices and its partial unique index.
//
//go:embed schema.sql
var Schema string

// Guard describes threshold_notices' partial unique index: one active
// (sent or skipped) notice per payee and tax year; failed and revoked rows
// are exempt.
var Guard = pgguard.Guard{
	Table:          "threshold_notices",
	Columns:        []string{"payee_id", "tax_year"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"sent", "skipped"},
	IndexName:      "uq_threshold_notices_active",
}

// ThresholdCents is the reporting threshold: $600 of payouts in a tax year.
const ThresholdCents = 60000

// DedupWindow is how long the email provider remembers an Idempotency-Key
// and replays its first answer: 24 hours, as its documentation says. A
// claim first taken longer ago is not retried but parked.
const DedupWindow = 24 * time.Hour

// Keys is the key space of the notice. Version 1 keys are payee + tax year.
var Keys = idempotency.KeySpace{Namespace: "tax1099.threshold", Version: 1}

// Candidate is one payee-year that may be owed a notice. Every field comes
// from the database.
type Candidate struct {
	PayeeID string
	TaxYear int64 // from payouts.tax_year, never from the clock
	Name    string
	Email   string // "" when no address is on file: the notice is skipped
	// YearTotalCents is the year's payouts when the candidate was read. It
	// grows after the notice, so it is recorded but is neither in the key
	// nor in the fingerprint.
	YearTotalCents int64
}

// Key is the candidate's idempotency key.
func Key(c Candidate) (idempotency.Key, error) {
	return Keys.Key(idempotency.Str("payee", c.PayeeID), idempotency.Int("tax_year", c.TaxYear))
}

// Message is the email the provider is asked to send, as JSON.
type Message struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Subject string `json:"subject"`
	Text    string `json:"text"`
}

// Migrate creates the example's tables and the effect ledger.
func Migrate(ctx context.Context, db pgguard.DBTX) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("threshold1099: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// Config wires the program. DB, Endpoint and From are required.
type Config struct {
	DB *pgxpool.Pool
	// Endpoint is the provider's send URL: POST, a JSON Message, answered
	// with {"id": "<message id>"}.
	Endpoint string
	APIKey   string // sent as a bearer token
	From     string // the sender address
	// Client sends the requests; nil means httpeffect's default (10s
	// timeout, no redirects).
	Client *http.Client
	// Now is the ledger's clock; nil means the database clock. Tests pass
	// a fake clock to expire leases without sleeping.
	Now func() time.Time
	// Sweep tunes the tick's sweep (batch size, concurrency, rate limit).
	Sweep *sweep.Config
}

// Program is the threshold-notice job.
type Program struct {
	db       *pgxpool.Pool
	endpoint string
	apiKey   string
	from     string
	exec     *idempotency.Executor
	effect   *idempotency.Effect[Candidate, httpeffect.Response]
	sweep    *sweep.Config

	// beforeRecord, when set (tests only), runs inside the completion
	// transaction before the notice row is written: returning an error
	// simulates a crash after the provider sent the email.
	beforeRecord func(Candidate) error
}

// New returns the program.
func New(cfg Config) (*Program, error) {
	if cfg.DB == nil || cfg.Endpoint == "" || cfg.From == "" {
		return nil, errors.New("threshold1099: Config needs DB, Endpoint and From")
	}
	ledger, err := pgguard.New(cfg.DB, &pgguard.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	exec, err := idempotency.NewExecutor(ledger, &idempotency.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	p := &Program{db: cfg.DB, endpoint: cfg.Endpoint, apiKey: cfg.APIKey, from: cfg.From, exec: exec, sweep: cfg.Sweep}

	// The provider replays the first answer for a key within DedupWindow,
	// so httpeffect's default (ExpiredRetry) retries a claim left by a dead
	// worker under the same key, while the window lasts.
	eff := httpeffect.Effect(Keys.Namespace, Key, p.request, &httpeffect.Config{Client: cfg.Client, DedupWindow: DedupWindow})
	send := eff.Call
	eff.Call = func(ctx context.Context, key idempotency.Key, c Candidate) (httpeffect.Response, error) {
		if c.Email == "" {
			return httpeffect.Response{}, idempotency.Skip("no email address on file")
		}
		return send(ctx, key, c)
	}
	// The message is the payload: the same key with another recipient or
	// text is refused, never answered with the first message's replay.
	eff.Fingerprint = func(c Candidate) ([]byte, error) { return idempotency.FingerprintJSON(p.message(c)) }
	eff.Lease = 2 * time.Minute // well above the client's 10s timeout
	eff.OnComplete = pgguard.OnComplete(p.record)
	eff.OnFail = pgguard.OnFail(p.recordRefusal)
	p.effect = eff
	return p, nil
}

// Effect returns the notice effect, for contract tests and ad hoc sweeps.
func (p *Program) Effect() *idempotency.Effect[Candidate, httpeffect.Response] { return p.effect }

// Executor returns the program's executor; its Store is the ledger.
func (p *Program) Executor() *idempotency.Executor { return p.exec }

// message builds the email from the payee and the tax year only, so every
// attempt under one key sends the same request.
func (p *Program) message(c Candidate) Message {
	return Message{
		From:    p.from,
		To:      c.Email,
		Subject: fmt.Sprintf("Your %d payouts reached the 1099 reporting threshold", c.TaxYear),
		Text: fmt.Sprintf("Hello %s,\n\nYour payouts for tax year %d reached $600, the threshold for Form 1099-NEC. "+
			"We will send you the form by January 31, %d. Please check that your tax details are up to date.\n",
			c.Name, c.TaxYear, c.TaxYear+1),
	}
}

// request is httpeffect's build function, called for every attempt.
func (p *Program) request(ctx context.Context, c Candidate) (*http.Request, error) {
	body, err := json.Marshal(p.message(c))
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if p.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
	return req, nil
}

// record writes the notice row in the transaction that marks the effect
// applied (sent) or skipped. A 23505 on uq_threshold_notices_active means
// "already there"; every other error is returned and nothing is marked.
func (p *Program) record(ctx context.Context, tx pgx.Tx, c Candidate, resp httpeffect.Response) error {
	if p.beforeRecord != nil {
		if err := p.beforeRecord(c); err != nil {
			return err
		}
	}
	key, err := Key(c)
	if err != nil {
		return err
	}
	status := "sent"
	if c.Email == "" {
		status = "skipped"
	}
	var sent struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(resp.Body, &sent) // no id in the answer: message_id stays NULL
	_, err = pgguard.InsertOnce(ctx, tx, Guard,
		`INSERT INTO threshold_notices (payee_id, tax_year, status, email, message_id, year_total_cents, idempotency_key)
		 VALUES ($1, $2, $3, NULLIF($4, ''), NULLIF($5, ''), $6, $7)`,
		c.PayeeID, c.TaxYear, status, c.Email, sent.ID, c.YearTotalCents, key.String())
	return err
}

// Candidates returns every payee-year whose payouts reach ThresholdCents
// and that has no active notice, nor a failed one for the payee's current
// address. It reads no clock: the years come from the payouts. (It groups
// every year's payouts; with a long history, bound it to the years still
// being reported, a setting, never the clock.)
func (p *Program) Candidates(ctx context.Context) ([]Candidate, error) {
	rows, err := p.db.Query(ctx, `
		SELECT y.payee_id, y.tax_year, pe.name, coalesce(pe.email, ''), y.total
		FROM (SELECT payee_id, tax_year, sum(amount_cents)::bigint AS total
		      FROM payouts
		      GROUP BY payee_id, tax_year
		      HAVING sum(amount_cents) >= $1) y
		JOIN payees pe ON pe.id = y.payee_id
		WHERE NOT EXISTS (
		    SELECT 1 FROM threshold_notices n
		    WHERE n.payee_id = y.payee_id AND n.tax_year = y.tax_year
		      AND (n.status IN ('sent', 'skipped')
		           OR (n.status = 'failed' AND n.email IS NOT DISTINCT FROM pe.email)))
		ORDER BY y.payee_id, y.tax_year`, ThresholdCents)
	if err != nil {
		return nil, fmt.Errorf("threshold1099: candidates: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Candidate, error) {
		var c Candidate
		return c, r.Scan(&c.PayeeID, &c.TaxYear, &c.Name, &c.Email, &c.YearTotalCents)
	})
}

// Tick is one run of the cron job: find the candidates and sweep them
// through the effect. Overlapping ticks are safe: the sweep pre-flights the
// ledger in batches, and the claim stops the second tick before it calls
// the provider.
func (p *Program) Tick(ctx context.Context) (sweep.Report, error) {
	cands, err := p.Candidates(ctx)
	if err != nil {
		return sweep.Report{}, err
	}
	return sweep.Run(ctx, p.exec, p.effect, sweep.Slice(cands), p.sweep)
}

// recordRefusal writes a failed notice when the provider refused for good
// (a 4xx, such as an address it will not send to), in the transaction that
// marks the ledger record failed (Effect.OnFail). The failed row keeps the
// payee-year out of later ticks until the address changes.
func (p *Program) recordRefusal(ctx context.Context, tx pgx.Tx, c Candidate, cause error) error {
	key, err := Key(c)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO threshold_notices (payee_id, tax_year, status, email, year_total_cents, idempotency_key, reason)
		VALUES ($1, $2, 'failed', NULLIF($3, ''), $4, $5, $6)`,
		c.PayeeID, c.TaxYear, c.Email, c.YearTotalCents, key.String(), cause.Error()); err != nil {
		return fmt.Errorf("threshold1099: record refusal of %s/%d: %w", c.PayeeID, c.TaxYear, err)
	}
	return nil
}
