package payout

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
)

// Schema is the example's migration: payout_requests, payout_transfers and
// its partial unique index.
//
//go:embed schema.sql
var Schema string

// Guard describes payout_transfers' partial unique index: one sent transfer
// per payout request; failed rows are exempt.
var Guard = pgguard.Guard{
	Table:          "payout_transfers",
	Columns:        []string{"payout_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"sent"},
	IndexName:      "uq_payout_transfers_active",
}

// Keys is the key space of the transfer. Version 1 keys are the payout
// request id.
var Keys = idempotency.KeySpace{Namespace: "payouts.transfer", Version: 1}

// DedupWindow is how long the provider remembers a client_transaction_id
// and answers a repeat with the transfer it made: 24 hours, as its
// documentation says. A record whose transfer may have been made is
// retried under the same UUID only while a whole run fits in it; past it,
// Find asks the provider.
const DedupWindow = 24 * time.Hour

// Lease is how long a transfer's claim is held: well above the client's
// 10s timeout times the three in-run attempts.
const Lease = 2 * time.Minute

// Request is one payout request: the intent. Every field comes from
// payout_requests.
type Request struct {
	ID          string
	Recipient   string
	AmountCents int64
	Currency    string
}

// Key is the payout request's idempotency key: its id, nothing else.
func Key(r Request) (idempotency.Key, error) {
	return Keys.Key(idempotency.Str("payout", r.ID))
}

// TransferRequest is the body of POST /v1/transfers.
type TransferRequest struct {
	// ClientTransactionID is the provider's idempotency key, a UUID:
	// Key.UUID() of the provider key of this attempt's generation.
	ClientTransactionID string `json:"client_transaction_id"`
	// Reference is Key.Base().UUID(): the same for every generation of
	// one payout request, so Find matches whatever generation made the
	// transfer.
	Reference string `json:"reference"`
	Recipient string `json:"recipient"`
	Amount    int64  `json:"amount"`
	Currency  string `json:"currency"`
}

// Transfer is the provider's transfer object, and the effect's result.
type Transfer struct {
	ID                  string `json:"id"`
	ClientTransactionID string `json:"client_transaction_id"`
	Reference           string `json:"reference"`
	Recipient           string `json:"recipient"`
	Amount              int64  `json:"amount"`
	Currency            string `json:"currency"`
	Status              string `json:"status"`
}

// payload is what must be equal for two runs under one key: the money
// movement itself. The UUIDs are left out: they are the key.
type payload struct {
	Recipient string `json:"recipient"`
	Amount    int64  `json:"amount"`
	Currency  string `json:"currency"`
}

func payloadOf(r Request) payload {
	return payload{Recipient: r.Recipient, Amount: r.AmountCents, Currency: strings.ToLower(r.Currency)}
}

// Migrate creates the example's tables and the effect ledger.
func Migrate(ctx context.Context, db pgguard.DBTX) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("payout: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// Config wires the program. DB and BaseURL are required.
type Config struct {
	DB *pgxpool.Pool
	// BaseURL is the provider's API root: POST {BaseURL}/v1/transfers
	// makes a transfer, GET {BaseURL}/v1/transfers?reference=... lists.
	BaseURL string
	APIKey  string // sent as a bearer token
	// Client sends the requests; nil means httpeffect's default (10s
	// timeout, no redirects).
	Client *http.Client
	// Now is the ledger's and the executor's clock; nil means the
	// database's and time.Now. Tests pass a fake clock.
	Now func() time.Time
	// Sleep waits between in-run attempts (idempotency.Config.Sleep); nil
	// means a timer. Tests pass one that moves their fake clock.
	Sleep func(ctx context.Context, d time.Duration) error
	// Sweep tunes the tick's sweep (batch size, concurrency, rate limit).
	Sweep *sweep.Config
}

// Program is the payout job.
type Program struct {
	db      *pgxpool.Pool
	base    string
	apiKey  string
	httpCfg *httpeffect.Config
	exec    *idempotency.Executor
	effect  *idempotency.Effect[Request, Transfer]
	sweep   *sweep.Config

	// beforeRecord, when set (tests only), runs inside the completion
	// transaction before the transfer row is written: returning an error
	// simulates a crash after the provider made the transfer.
	beforeRecord func(Request) error
}

// New returns the program.
func New(cfg Config) (*Program, error) {
	if cfg.DB == nil || cfg.BaseURL == "" {
		return nil, errors.New("payout: Config needs DB and BaseURL")
	}
	if u, err := url.Parse(cfg.BaseURL); err != nil || !u.IsAbs() {
		return nil, fmt.Errorf("payout: BaseURL %q is not an absolute URL", cfg.BaseURL)
	}
	ledger, err := pgguard.New(cfg.DB, &pgguard.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	exec, err := idempotency.NewExecutor(ledger, &idempotency.Config{Now: cfg.Now, Sleep: cfg.Sleep})
	if err != nil {
		return nil, err
	}
	p := &Program{db: cfg.DB, base: strings.TrimRight(cfg.BaseURL, "/"), apiKey: cfg.APIKey,
		httpCfg: &httpeffect.Config{Client: cfg.Client}, exec: exec, sweep: cfg.Sweep}
	retry := httpeffect.DefaultRetry
	p.effect = &idempotency.Effect[Request, Transfer]{
		Name: Keys.Namespace,
		Key:  Key,
		// The money movement is the payload: the same payout request with
		// another amount or recipient is refused, never answered with the
		// first transfer.
		Fingerprint: func(r Request) ([]byte, error) { return idempotency.FingerprintJSON(payloadOf(r)) },
		Call:        p.transfer,
		Find:        p.find,
		OnComplete:  pgguard.OnComplete(p.record),
		OnFail:      pgguard.OnFail(p.recordRefusal),
		Lease:       Lease,
		// The provider deduplicates by client_transaction_id and answers a
		// repeat with the transfer it made: a lost answer, or a claim left
		// by a dead worker, is retried under the same UUID inside the
		// window. Past it, or after a saved failure, Find decides.
		Expired:     idempotency.ExpiredRetry,
		DedupWindow: DedupWindow,
		Retry:       &retry,
	}
	return p, nil
}

// Effect returns the transfer effect, for contract tests and ad hoc sweeps.
func (p *Program) Effect() *idempotency.Effect[Request, Transfer] { return p.effect }

// Executor returns the program's executor; its Store is the ledger.
func (p *Program) Executor() *idempotency.Executor { return p.exec }

// transfer is the effect's Call: one POST /v1/transfers whose
// client_transaction_id is the UUID of key, the provider key of this
// generation. httpeffect.Do sends it (with key.String() in the
// Idempotency-Key header too, which this provider ignores) and classifies
// the answer: 5xx and a lost answer are unknown (retried under the same
// UUID), a replayed 5xx needs reconciliation, 409/429/503 did not act,
// 422 is the provider's mismatch, other 4xx are refusals.
func (p *Program) transfer(ctx context.Context, key idempotency.Key, r Request) (Transfer, error) {
	body, err := json.Marshal(TransferRequest{
		ClientTransactionID: key.UUID(),
		Reference:           key.Base().UUID(),
		Recipient:           r.Recipient,
		Amount:              r.AmountCents,
		Currency:            strings.ToLower(r.Currency),
	})
	if err != nil {
		return Transfer{}, idempotency.Permanent(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+"/v1/transfers", bytes.NewReader(body))
	if err != nil {
		return Transfer{}, idempotency.Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	p.authorize(req)
	resp, err := httpeffect.Do(ctx, key, req, p.httpCfg)
	if err != nil {
		return Transfer{}, err
	}
	var t Transfer
	if err := json.Unmarshal(resp.Body, &t); err != nil || t.ID == "" {
		// The provider said it made the transfer but the answer is not
		// one: ask it (Find) rather than guess.
		return Transfer{}, idempotency.Reconcile(fmt.Errorf("payout: %d answer without a transfer: %q", resp.Status, resp.Body))
	}
	return t, nil
}

// find is the effect's Find: it lists the provider's transfers by
// reference, the UUID of the business key, which every generation of the
// payout request carries. Listing by client_transaction_id would miss a
// transfer made under a later generation (its UUID is another one).
func (p *Program) find(ctx context.Context, key idempotency.Key, r Request) (Transfer, bool, error) {
	ref := key.Base().UUID()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+"/v1/transfers?reference="+url.QueryEscape(ref), nil)
	if err != nil {
		return Transfer{}, false, err
	}
	p.authorize(req)
	client := p.httpCfg.Client
	if client == nil {
		client = listClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return Transfer{}, false, idempotency.NotActed(fmt.Errorf("payout: list transfers: %w", err), 0)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Transfer{}, false, idempotency.NotActed(fmt.Errorf("payout: list transfers: %s", resp.Status), 0)
	}
	var list struct {
		Data []Transfer `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return Transfer{}, false, fmt.Errorf("payout: list transfers: %w", err)
	}
	switch len(list.Data) {
	case 0:
		return Transfer{}, false, nil
	case 1:
		t := list.Data[0]
		if t.Reference != ref {
			return Transfer{}, false, fmt.Errorf("payout: list transfers: asked for reference %s, got %s", ref, t.Reference)
		}
		return t, true, nil
	}
	// More than one transfer for one payout request: something outside
	// this program sent one. Leave it to a person.
	return Transfer{}, false, fmt.Errorf("payout: %d transfers carry reference %s", len(list.Data), ref)
}

func (p *Program) authorize(req *http.Request) {
	if p.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
}

// record writes the transfer row in the transaction that marks the effect
// applied. A 23505 on uq_payout_transfers_active means "already there".
func (p *Program) record(ctx context.Context, tx pgx.Tx, r Request, t Transfer) error {
	if p.beforeRecord != nil {
		if err := p.beforeRecord(r); err != nil {
			return err
		}
	}
	key, err := Key(r)
	if err != nil {
		return err
	}
	_, err = pgguard.InsertOnce(ctx, tx, Guard,
		`INSERT INTO payout_transfers (payout_id, status, transfer_id, client_transaction_id, reference, idempotency_key)
		 VALUES ($1, 'sent', $2, $3, $4, $5)`,
		r.ID, t.ID, t.ClientTransactionID, key.Base().UUID(), key.String())
	return err
}

// recordRefusal writes a failed transfer row when the provider refused
// (a 4xx), in the transaction that marks the ledger record failed. The
// row keeps the payout request out of later ticks.
func (p *Program) recordRefusal(ctx context.Context, tx pgx.Tx, r Request, cause error) error {
	key, err := Key(r)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO payout_transfers (payout_id, status, reference, idempotency_key, reason)
		VALUES ($1, 'failed', $2, $3, $4)`, r.ID, key.Base().UUID(), key.String(), cause.Error()); err != nil {
		return fmt.Errorf("payout: record refusal of %s: %w", r.ID, err)
	}
	return nil
}

// listClient lists transfers when Config.Client is nil.
var listClient = &http.Client{Timeout: httpeffect.DefaultTimeout}

const requestCols = `r.id, r.recipient, r.amount_cents, r.currency`

// Candidates returns the payout requests with no transfer row: never sent,
// and not refused.
func (p *Program) Candidates(ctx context.Context) ([]Request, error) {
	rows, err := p.db.Query(ctx, `SELECT `+requestCols+` FROM payout_requests r
		WHERE NOT EXISTS (SELECT 1 FROM payout_transfers t WHERE t.payout_id = r.id)
		ORDER BY r.id`)
	if err != nil {
		return nil, fmt.Errorf("payout: candidates: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Request])
}

// Pay makes the transfer of one payout request now, for a consumer of
// "payout approved" events. A repeat, or a tick that got there first,
// answers from the ledger without a request.
func (p *Program) Pay(ctx context.Context, payoutID string) (idempotency.Result[Transfer], error) {
	rows, err := p.db.Query(ctx, `SELECT `+requestCols+` FROM payout_requests r WHERE r.id = $1`, payoutID)
	if err != nil {
		return idempotency.Result[Transfer]{}, fmt.Errorf("payout: pay %s: %w", payoutID, err)
	}
	r, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Request])
	if err != nil {
		return idempotency.Result[Transfer]{}, fmt.Errorf("payout: pay %s: %w", payoutID, err)
	}
	return idempotency.Run(ctx, p.exec, p.effect, r)
}

// Tick is one run of the cron job: sweep the payout requests without a
// transfer through the effect. Overlapping ticks, and ticks racing Pay,
// are safe: the claim stops all but one before the provider.
func (p *Program) Tick(ctx context.Context) (sweep.Report, error) {
	cands, err := p.Candidates(ctx)
	if err != nil {
		return sweep.Report{}, err
	}
	return sweep.Run(ctx, p.exec, p.effect, sweep.Slice(cands), p.sweep)
}
