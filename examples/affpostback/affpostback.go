package affpostback

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
)

// Schema is the example's migration: conversions, postbacks and its
// partial unique index.
//
//go:embed schema.sql
var Schema string

// Guard describes postbacks' partial unique index: one delivered postback
// per conversion; failed rows are exempt.
var Guard = pgguard.Guard{
	Table:          "postbacks",
	Columns:        []string{"conversion_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"delivered"},
	IndexName:      "uq_postbacks_active",
}

// Keys is the key space of the postback. Version 1 keys are the conversion
// id.
var Keys = idempotency.KeySpace{Namespace: "aff.postback", Version: 1}

// Lease is how long a postback's claim is held: well above the client's 10s
// timeout. A worker that dies before calling is taken over after it.
const Lease = time.Minute

// Conversion is one conversion to report to the network.
type Conversion struct {
	ID          string
	ClickID     string
	PayoutCents int64
	Currency    string
}

// Key is the conversion's idempotency key.
func Key(c Conversion) (idempotency.Key, error) {
	return Keys.Key(idempotency.Str("conversion", c.ID))
}

// params are the postback's query parameters: the payload.
func params(c Conversion) url.Values {
	return url.Values{
		"click_id": {c.ClickID},
		"txid":     {c.ID},
		"amount":   {fmt.Sprintf("%d.%02d", c.PayoutCents/100, c.PayoutCents%100)},
		"currency": {c.Currency},
	}
}

// Migrate creates the example's tables and the effect ledger.
func Migrate(ctx context.Context, db pgguard.DBTX) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("affpostback: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// Config wires the program. DB and URL are required.
type Config struct {
	DB *pgxpool.Pool
	// URL is the network's postback URL with its fixed parameters (offer,
	// advertiser); click_id, txid, amount and currency are added.
	URL string
	// Client sends the requests. Nil means httpeffect's default for
	// receivers that ignore the key (10s timeout, no redirects, a new
	// connection per request). A client of your own must disable
	// keep-alives too, or net/http may re-send a GET by itself.
	Client *http.Client
	// Now is the ledger's clock; nil means the database clock. Tests pass
	// a fake clock to expire leases without sleeping.
	Now func() time.Time
	// Sweep tunes the tick's sweep (batch size, concurrency, rate limit).
	Sweep *sweep.Config
}

// Program is the postback job.
type Program struct {
	db     *pgxpool.Pool
	url    *url.URL
	ledger *pgguard.Store
	exec   *idempotency.Executor
	effect *idempotency.Effect[Conversion, httpeffect.Response]
	sweep  *sweep.Config

	// beforeRecord, when set (tests only), runs inside the completion
	// transaction before the postbacks row is written: returning an error
	// simulates a crash after the network was hit.
	beforeRecord func(Conversion) error
}

// New returns the program.
func New(cfg Config) (*Program, error) {
	if cfg.DB == nil || cfg.URL == "" {
		return nil, errors.New("affpostback: Config needs DB and URL")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || !u.IsAbs() {
		return nil, fmt.Errorf("affpostback: URL %q is not an absolute URL", cfg.URL)
	}
	ledger, err := pgguard.New(cfg.DB, &pgguard.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	exec, err := idempotency.NewExecutor(ledger, &idempotency.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	p := &Program{db: cfg.DB, url: u, ledger: ledger, exec: exec, sweep: cfg.Sweep}
	// ReceiverIgnoresKey: httpeffect records the start of each call
	// (ExpiredRetryUncalled), so only a claim whose call never started is
	// taken over; one that may have posted is left for an operator.
	p.effect = httpeffect.Effect(Keys.Namespace, Key, p.request,
		&httpeffect.Config{Client: cfg.Client, ReceiverIgnoresKey: true})
	p.effect.Fingerprint = func(c Conversion) ([]byte, error) { return idempotency.FingerprintJSON(params(c)) }
	p.effect.Lease = Lease
	p.effect.OnComplete = pgguard.OnComplete(p.record)
	p.effect.OnFail = pgguard.OnFail(p.recordRefusal)
	return p, nil
}

// Effect returns the postback effect, for contract tests and ad hoc sweeps.
func (p *Program) Effect() *idempotency.Effect[Conversion, httpeffect.Response] { return p.effect }

// Executor returns the program's executor; its Store is the ledger.
func (p *Program) Executor() *idempotency.Executor { return p.exec }

// request is httpeffect's build function, called for every attempt.
func (p *Program) request(ctx context.Context, c Conversion) (*http.Request, error) {
	u := *p.url
	q := u.Query()
	for k, v := range params(c) {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	return http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
}

// record writes the postbacks row in the transaction that marks the effect
// applied. A 23505 on uq_postbacks_active means "already there".
func (p *Program) record(ctx context.Context, tx pgx.Tx, c Conversion, resp httpeffect.Response) error {
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
		`INSERT INTO postbacks (conversion_id, status, http_status, idempotency_key) VALUES ($1, 'delivered', $2, $3)`,
		c.ID, resp.Status, key.String())
	return err
}

// Candidates returns the conversions with no postbacks row: never
// delivered, and not refused.
func (p *Program) Candidates(ctx context.Context) ([]Conversion, error) {
	rows, err := p.db.Query(ctx, `
		SELECT c.id, c.click_id, c.payout_cents, c.currency
		FROM conversions c
		WHERE NOT EXISTS (SELECT 1 FROM postbacks pb WHERE pb.conversion_id = c.id)
		ORDER BY c.id`)
	if err != nil {
		return nil, fmt.Errorf("affpostback: candidates: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Conversion])
}

// Deliver fires the postback of one conversion now, for a consumer of
// "conversion created" events. A repeat, or a tick that got there first,
// answers from the ledger without a request.
func (p *Program) Deliver(ctx context.Context, conversionID string) (idempotency.Result[httpeffect.Response], error) {
	var c Conversion
	err := p.db.QueryRow(ctx, `SELECT id, click_id, payout_cents, currency FROM conversions WHERE id = $1`,
		conversionID).Scan(&c.ID, &c.ClickID, &c.PayoutCents, &c.Currency)
	if err != nil {
		return idempotency.Result[httpeffect.Response]{}, fmt.Errorf("affpostback: deliver %s: %w", conversionID, err)
	}
	return idempotency.Run(ctx, p.exec, p.effect, c)
}

// Tick is one run of the cron job: sweep the conversions without a
// postback through the effect. Overlapping ticks, and ticks racing
// Deliver, are safe: the claim stops all but one before the request.
func (p *Program) Tick(ctx context.Context) (sweep.Report, error) {
	cands, err := p.Candidates(ctx)
	if err != nil {
		return sweep.Report{}, err
	}
	return sweep.Run(ctx, p.exec, p.effect, sweep.Slice(cands), p.sweep)
}

// recordRefusal writes a failed postbacks row when the network refused the
// request with a 4xx, in the transaction that marks the ledger record
// failed (Effect.OnFail). (For a receiver that ignores keys, the 422
// httpeffect reports as a key mismatch is a refusal like any other.)
func (p *Program) recordRefusal(ctx context.Context, tx pgx.Tx, c Conversion, cause error) error {
	var se *httpeffect.StatusError
	if !errors.As(cause, &se) {
		return nil
	}
	key, err := Key(c)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO postbacks (conversion_id, status, http_status, idempotency_key, reason)
		VALUES ($1, 'failed', $2, $3, $4)`, c.ID, se.Response.Status, key.String(), se.Error()); err != nil {
		return fmt.Errorf("affpostback: record refusal of %s: %w", c.ID, err)
	}
	return nil
}

// Settle resolves a postback in doubt, once someone has checked the
// network's report for the conversion. stuck is the record
// Operator.ListStuck returned: its fencing token makes Settle fail with
// idempotency.ErrClaimLost if anything touched the record since, and a
// record a live claim holds is refused with idempotency.ErrClaimLive.
//
// delivered: the network counted the conversion. The ledger record is
// marked applied (its stored result is a Response with Status 0, "settled
// by hand") and a delivered postbacks row is written, in one transaction.
// Not delivered: the ledger record is marked failed, which frees the key,
// and the next tick fires the postback again.
func (p *Program) Settle(ctx context.Context, conversionID string, stuck idempotency.Record, delivered bool, note string) error {
	key, err := Key(Conversion{ID: conversionID})
	if err != nil {
		return err
	}
	if stuck.Key != key.String() {
		return fmt.Errorf("affpostback: settle %s: the record is another key's (%s)", conversionID, stuck.Key)
	}
	req := idempotency.SettleRequest{Key: stuck.Key, Token: stuck.Token, State: idempotency.StateFailed, Reason: note}
	if !delivered {
		_, err := p.ledger.Settle(ctx, req)
		return err
	}
	req.State = idempotency.StateApplied
	if req.Result, err = (idempotency.JSONCodec[httpeffect.Response]{}).Encode(httpeffect.Response{}); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, p.db, func(tx pgx.Tx) error {
		ledger, err := p.ledger.WithDB(tx)
		if err != nil {
			return err
		}
		if _, err := ledger.Settle(ctx, req); err != nil {
			return fmt.Errorf("affpostback: settle %s: %w", conversionID, err)
		}
		_, err = pgguard.InsertOnce(ctx, tx, Guard,
			`INSERT INTO postbacks (conversion_id, status, idempotency_key, reason) VALUES ($1, 'delivered', $2, $3)`,
			conversionID, key.String(), note)
		return err
	})
}
