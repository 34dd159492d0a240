package remediate

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/examples/applyloyalty"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/stripeeffect"
)

// Schema is the plan table's migration (loyalty_remediations).
//
//go:embed schema.sql
var Schema string

// Migrate creates the plan table and the effect ledger. It never touches
// loyalty_discounts: applyloyalty.Migrate would try to build the unique
// index, which fails while duplicates exist (build it afterwards with
// pgguard.CreateIndexConcurrently).
func Migrate(ctx context.Context, db pgguard.DBTX) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("remediate: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// The key spaces of the three steps. Keys are business identity only: the
// promotion code being revoked, or the user and the incident. The incident
// id is an input, never the clock.
var (
	// DeactivateKeys: one deactivation per promotion code, whatever the
	// incident (deactivating a code is done once, ever).
	DeactivateKeys = idempotency.KeySpace{Namespace: "loyalty.remediate.deactivate", Version: 1}
	// CreditKeys: one apology credit per user per incident.
	CreditKeys = idempotency.KeySpace{Namespace: "loyalty.remediate.credit", Version: 1}
	// ApologyKeys: one apology email per user per incident.
	ApologyKeys = idempotency.KeySpace{Namespace: "loyalty.remediate.apology", Version: 1}
)

// Duplicate is one loyalty_discounts row to revoke: the input of the
// deactivation step.
type Duplicate struct {
	Incident        string
	DiscountID      int64 // loyalty_discounts.id
	UserID          string
	PromotionCodeID string // deactivated at Stripe
	Code            string
	// IdempotencyKey is the key the row was written under: the old job's
	// clock-bucket key for the incident's rows, which the ledger never saw.
	IdempotencyKey string
}

// Affected is one user who held duplicates: the input of the credit and the
// apology steps.
type Affected struct {
	Incident   string
	UserID     string
	CustomerID string // the Stripe customer credited
	KeptCode   string // the code the user keeps, named in the apology
	// Email is the apology's recipient. Empty: the apology is refused
	// before anything is sent (a permanent failure, which frees the key),
	// and the next run tries again.
	Email string
}

// snippet:remediation-sweep-keys

// DeactivateKey is the deactivation's key: the promotion code being revoked.
func DeactivateKey(d Duplicate) (idempotency.Key, error) {
	return DeactivateKeys.Key(idempotency.Str("promo", d.PromotionCodeID))
}

// CreditKey is the credit's key: the user and the incident.
func CreditKey(a Affected) (idempotency.Key, error) {
	return CreditKeys.Key(idempotency.Str("user", a.UserID), idempotency.Str("incident", a.Incident))
}

// ApologyKey is the apology's key: the user and the incident.
func ApologyKey(a Affected) (idempotency.Key, error) {
	return ApologyKeys.Key(idempotency.Str("user", a.UserID), idempotency.Str("incident", a.Incident))
}

// end snippet

// Mail is the email provider: POST Endpoint with a JSON Message and the key
// in an Idempotency-Key header; the provider deduplicates by that key.
type Mail struct {
	Endpoint string
	APIKey   string // sent as a bearer token
	From     string
	// Client sends the requests; nil means httpeffect's default (10 s
	// timeout, no redirects).
	Client *http.Client
}

// Message is the apology email, as JSON.
type Message struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Subject string `json:"subject"`
	Text    string `json:"text"`
}

// Credit is the apology credit each affected user gets: one month of Pro.
type Credit struct {
	Amount   int64  // in the currency's smallest unit, positive
	Currency string // three-letter ISO code, such as "usd"
}

// Config wires a remediation. Every field but Now, Sweep and Progress is
// required; New checks them once, dry run or not, so a dry run also
// checks what the real run will need.
type Config struct {
	DB     *pgxpool.Pool
	Stripe *client.API // build it with stripeeffect.NewAPI
	Mail   Mail
	Credit Credit
	// Recipients returns the email address of each of userIDs that has one
	// (one call per run, for every affected user).
	Recipients func(ctx context.Context, userIDs []string) (map[string]string, error)
	// Now is the ledger's clock; nil means the database clock. Tests pass
	// a fake clock to expire a killed run's leases without sleeping.
	Now func() time.Time
	// Sweep tunes each step's sweep: batch size, concurrency, and a rate
	// limit on provider calls (shared by the three steps). Its OnProgress
	// is replaced by the remediation's own.
	Sweep *sweep.Config
	// Progress, when set, receives one line per planning step and per
	// batch of each step.
	Progress io.Writer

	// wrapStore, in tests, wraps the ledger the executor uses (to kill a
	// run between a provider's answer and its record).
	wrapStore func(idempotency.Store) idempotency.Store
}

// RecipientsQuery returns a Config.Recipients that runs query on db. query
// takes the user ids as $1 (a text[]) and returns (user id, email) rows,
// such as
//
//	SELECT id, email FROM users WHERE id = ANY($1)
//
// A NULL or empty email counts as none.
func RecipientsQuery(db pgguard.DBTX, query string) func(context.Context, []string) (map[string]string, error) {
	return func(ctx context.Context, userIDs []string) (map[string]string, error) {
		rows, err := db.Query(ctx, query, userIDs)
		if err != nil {
			return nil, err
		}
		out := make(map[string]string, len(userIDs))
		var (
			id    string
			email *string
		)
		_, err = pgx.ForEachRow(rows, []any{&id, &email}, func() error {
			if email != nil && *email != "" {
				out[id] = *email
			}
			return nil
		})
		return out, err
	}
}

// Remediation is the sweep that cleans up an incident's duplicate loyalty
// discounts. It is safe to run again at any time, after any crash, and
// concurrently with itself: every provider call is an effect under a
// business key, claimed in the ledger before it is sent.
type Remediation struct {
	cfg    Config
	db     *pgxpool.Pool
	ledger *pgguard.Store
	exec   *idempotency.Executor

	deactivate *idempotency.Effect[Duplicate, stripeeffect.PromotionCodeResult]
	credit     *idempotency.Effect[Affected, stripeeffect.CreditResult]
	apology    *idempotency.Effect[Affected, httpeffect.Response]
}

// New returns a remediation. It validates cfg and touches nothing.
func New(cfg Config) (*Remediation, error) {
	switch {
	case cfg.DB == nil, cfg.Stripe == nil:
		return nil, errors.New("remediate: Config needs DB and Stripe")
	case cfg.Mail.Endpoint == "", cfg.Mail.From == "":
		return nil, errors.New("remediate: Config.Mail needs Endpoint and From")
	case cfg.Recipients == nil:
		return nil, errors.New("remediate: Config needs Recipients")
	case cfg.Credit.Amount <= 0, len(cfg.Credit.Currency) != 3:
		return nil, fmt.Errorf("remediate: Config.Credit needs a positive amount and a three-letter currency, got %d %q",
			cfg.Credit.Amount, cfg.Credit.Currency)
	}
	cfg.Credit.Currency = strings.ToLower(cfg.Credit.Currency)
	ledger, err := pgguard.New(cfg.DB, &pgguard.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	var store idempotency.Store = ledger
	if cfg.wrapStore != nil {
		store = cfg.wrapStore(store)
	}
	exec, err := idempotency.NewExecutor(store, &idempotency.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	r := &Remediation{cfg: cfg, db: cfg.DB, ledger: ledger, exec: exec}

	// Deactivation: Stripe's own idempotency under the code's key; the row
	// is revoked in the transaction that records the deactivation.
	r.deactivate = stripeeffect.DeactivatePromotionCodeEffect(cfg.Stripe, DeactivateKeys.Namespace, DeactivateKey,
		func(d Duplicate) string { return d.PromotionCodeID })
	r.deactivate.OnComplete = pgguard.OnComplete(r.revokeRow)

	r.credit = stripeeffect.CreditEffect(cfg.Stripe, CreditKeys.Namespace, CreditKey, r.creditOf)

	r.apology = httpeffect.Effect(ApologyKeys.Namespace, ApologyKey, r.request, &httpeffect.Config{Client: cfg.Mail.Client})
	send := r.apology.Call
	r.apology.Call = func(ctx context.Context, key idempotency.Key, a Affected) (httpeffect.Response, error) {
		if a.Email == "" {
			return httpeffect.Response{}, idempotency.Permanent(fmt.Errorf("user %s has no email address on file", a.UserID))
		}
		return send(ctx, key, a)
	}
	// The message is the payload: the same key with another recipient or
	// text is refused, never answered with the first message's replay.
	r.apology.Fingerprint = func(a Affected) ([]byte, error) { return idempotency.FingerprintJSON(r.message(a)) }
	r.apology.Lease = 2 * time.Minute // well above the client's 10 s timeout times 3 attempts
	return r, nil
}

// creditOf is the credit effect's request, from the input only.
func (r *Remediation) creditOf(a Affected) stripeeffect.Credit {
	return stripeeffect.Credit{
		Customer:    a.CustomerID,
		Amount:      r.cfg.Credit.Amount,
		Currency:    r.cfg.Credit.Currency,
		Description: "Apology: one month of Pro (" + a.Incident + ")",
		Metadata:    map[string]string{"incident_id": a.Incident, "user_id": a.UserID},
	}
}

// message is the apology, from the input only, so every attempt under one
// key sends the same request.
func (r *Remediation) message(a Affected) Message {
	return Message{
		From:    r.cfg.Mail.From,
		To:      a.Email,
		Subject: "About your anniversary loyalty code",
		Text: "Hello,\n\nFor your Pro anniversary we sent you two promotion codes instead of one. " +
			"Your code " + a.KeptCode + " stays valid; the second code has been deactivated. " +
			"We have added one month of Pro to your account balance as an apology.\n\n" +
			"We are sorry for the confusion.\n\nReference: " + a.Incident + "\n",
	}
}

// request is httpeffect's build function, called for every attempt.
func (r *Remediation) request(ctx context.Context, a Affected) (*http.Request, error) {
	body, err := json.Marshal(r.message(a))
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.cfg.Mail.Endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if r.cfg.Mail.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+r.cfg.Mail.APIKey)
	}
	return req, nil
}

// revokeRow runs in the transaction that records the deactivation: it marks
// the duplicate's row revoked, and revokes the ledger record the row was
// written under, if there is one and it names this very code.
//
// Which ledger record is the duplicate's: the one under the row's own
// idempotency_key, the key that made it. The incident's duplicates were
// made by the old clock-keyed job, whose keys the ledger never saw, so for
// them there is none and nothing is revoked. A duplicate written through the
// ledger (a tick of the new job that overlapped the old one during the
// deploy) has one, naming its code: it is revoked, as Program.Revoke
// revokes a row's record with the row. A record that names another code is
// left alone, and so is the user's anniversary key when it stands for the
// code they keep: the user still holds their one bonus.
func (r *Remediation) revokeRow(ctx context.Context, tx pgx.Tx, d Duplicate, _ stripeeffect.PromotionCodeResult) error {
	// snippet:remediation-sweep-revoke
	if _, err := tx.Exec(ctx, `
		UPDATE loyalty_discounts SET status = 'revoked', revoked_at = now()
		WHERE id = $1 AND status IN ('applied', 'skipped')`, d.DiscountID); err != nil {
		return fmt.Errorf("revoke loyalty_discounts row %d: %w", d.DiscountID, err)
	}
	if d.IdempotencyKey == "" {
		return nil
	}
	ledger, err := r.ledger.WithDB(tx)
	if err != nil {
		return err
	}
	recs, err := ledger.Lookup(ctx, []string{d.IdempotencyKey})
	if err != nil {
		return err
	}
	rec, ok := recs[d.IdempotencyKey]
	if !ok || !rec.State.Done() {
		return nil
	}
	var made stripeeffect.PromotionCodeResult
	if json.Unmarshal(rec.Result, &made) != nil || made.ID != d.PromotionCodeID {
		return nil
	}
	_, err = ledger.Revoke(ctx, d.IdempotencyKey, "duplicate "+d.PromotionCodeID+" revoked ("+d.Incident+")")
	return err
	// end snippet
}

// checkIncident refuses an incident id that cannot be a key part, or that
// carries surrounding spaces (a copy-paste away from a second incident id).
func checkIncident(id string) error {
	if id == "" || strings.TrimSpace(id) != id || len(id) > 64 || strings.IndexFunc(id, unicode.IsControl) >= 0 {
		return fmt.Errorf("remediate: incident id %q: want 1-64 characters without surrounding spaces", id)
	}
	return nil
}

// Run remediates the incident:
//
//  1. Plan: in one transaction, pgguard.Audit finds every user with more
//     than one active loyalty discount (oldest first: created_at, id), and
//     every row but the oldest is added to the incident's plan (once: a
//     row already planned stays with its incident).
//  2. Deactivate each planned duplicate's code at Stripe (keyed by the
//     code) and revoke its row in the same transaction as the ledger.
//  3. Credit each affected user whose duplicates are all deactivated
//     (keyed by user and incident).
//  4. Send the apology to each user whose credit is done (keyed by user
//     and incident): the email says what was done, so it goes last.
//
// Each step is a sweep: a batch pre-flight of the ledger settles what is
// done already without a provider call, and a claim guards every call. A
// run killed anywhere leaves each intent done, free, or held under a lease
// that the next run waits for and then takes over under the same key,
// which the provider deduplicates. The report says what remains
// (Report.Complete); run again until it is complete.
//
// ctx cancels the run between effects (see sweep.Run); the report of what
// was done is returned with the error.
func (r *Remediation) Run(ctx context.Context, incident string) (Report, error) {
	if err := checkIncident(incident); err != nil {
		return Report{}, err
	}
	rep := r.newReport(incident, false)
	var added int
	err := pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		var err error
		added, rep.OtherIncidents, err = r.plan(ctx, tx, incident)
		return err
	})
	if err != nil {
		return rep, err
	}
	if rep.Users, err = r.load(ctx, r.db, incident); err != nil {
		return rep, err
	}
	dups, affected := inputs(incident, rep.Users)
	r.progressf("plan: %d duplicate codes of %d users under %s (%d new this run)\n", len(dups), len(affected), incident, added)
	if err := r.addresses(ctx, affected); err != nil {
		return rep, err
	}
	store := r.exec.Store()
	st, err := r.lookup(ctx, store, dups, affected)
	if err != nil {
		return rep, err
	}
	st.count(&rep, true)

	rep.Deactivate.Sweep, err = sweep.Run(ctx, r.exec, r.deactivate, sweep.Slice(dups), r.sweepConfig("deactivate", len(dups)))
	if err != nil {
		return rep, fmt.Errorf("remediate: deactivate: %w", err)
	}
	if st.codes, err = done(ctx, store, r.deactivate, dups); err != nil {
		return rep, err
	}
	ready := st.codesDone(rep.Users)
	toCredit := pick(affected, ready)
	rep.Credit.Waiting = len(affected) - len(toCredit)
	rep.Credit.Sweep, err = sweep.Run(ctx, r.exec, r.credit, sweep.Slice(toCredit), r.sweepConfig("credit", len(toCredit)))
	if err != nil {
		return rep, fmt.Errorf("remediate: credit: %w", err)
	}
	if st.credits, err = done(ctx, store, r.credit, affected); err != nil {
		return rep, err
	}
	for i := range ready {
		ready[i] = ready[i] && st.credits[i]
	}
	toEmail := pick(affected, ready)
	rep.Apology.Waiting = len(affected) - len(toEmail)
	rep.Apology.Sweep, err = sweep.Run(ctx, r.exec, r.apology, sweep.Slice(toEmail), r.sweepConfig("apology", len(toEmail)))
	if err != nil {
		return rep, fmt.Errorf("remediate: apology: %w", err)
	}
	if st, err = r.lookup(ctx, store, dups, affected); err != nil {
		return rep, err
	}
	st.count(&rep, false)
	rep.finished = true
	return rep, nil
}

// DryRun reports what Run would do now, and what it would cost, without
// sending anything or keeping anything: it migrates, audits and plans inside
// a transaction that it rolls back, and reads the ledger there. Addresses
// come from Config.Recipients.
func (r *Remediation) DryRun(ctx context.Context, incident string) (Report, error) {
	if err := checkIncident(incident); err != nil {
		return Report{}, err
	}
	rep := r.newReport(incident, true)
	tx, err := r.db.Begin(ctx)
	if err != nil {
		return rep, fmt.Errorf("remediate: dry run: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := Migrate(ctx, tx); err != nil {
		return rep, err
	}
	if _, rep.OtherIncidents, err = r.plan(ctx, tx, incident); err != nil {
		return rep, err
	}
	if rep.Users, err = r.load(ctx, tx, incident); err != nil {
		return rep, err
	}
	dups, affected := inputs(incident, rep.Users)
	if err := r.addresses(ctx, affected); err != nil {
		return rep, err
	}
	for _, a := range affected {
		if a.Email == "" {
			rep.NoAddress = append(rep.NoAddress, a.UserID)
		}
	}
	ledger, err := r.ledger.WithDB(tx)
	if err != nil {
		return rep, err
	}
	st, err := r.lookup(ctx, ledger, dups, affected)
	if err != nil {
		return rep, err
	}
	st.count(&rep, true)
	st.count(&rep, false)
	rep.finished = true
	return rep, nil
}

func (r *Remediation) newReport(incident string, dry bool) Report {
	return Report{Incident: incident, DryRun: dry, CreditAmount: r.cfg.Credit.Amount, Currency: r.cfg.Credit.Currency}
}

// plan audits loyalty_discounts in tx and adds every duplicate it finds to
// the incident's plan: all rows of a group but the oldest (created_at, then
// id). A row already in the plan of another incident stays there and is
// counted in others.
func (r *Remediation) plan(ctx context.Context, tx pgx.Tx, incident string) (added int, others map[string]int, err error) {
	groups, err := pgguard.Audit(ctx, tx, applyloyalty.Guard, &pgguard.AuditOptions{
		OrderBy: []string{"created_at", "id"}, // oldest first: Rows[0] is kept
		Columns: []string{"id", "code"},
	})
	if err != nil {
		return 0, nil, fmt.Errorf("remediate: audit: %w", err)
	}
	var dupIDs, keptIDs []int64
	for _, g := range groups {
		kept := g.Rows[0]["id"].(int64)
		for _, row := range g.Rows[1:] {
			dupIDs = append(dupIDs, row["id"].(int64))
			keptIDs = append(keptIDs, kept)
		}
	}
	if len(dupIDs) == 0 {
		return 0, nil, nil
	}
	tag, err := tx.Exec(ctx, `
		INSERT INTO loyalty_remediations
		    (discount_id, incident_id, user_id, customer_id, promotion_code_id, code, kept_discount_id, kept_code)
		SELECT d.id, $1, d.user_id, s.customer_id, d.promotion_code_id, d.code, k.id, k.code
		FROM unnest($2::bigint[], $3::bigint[]) AS p(dup, kept)
		JOIN loyalty_discounts d ON d.id = p.dup
		JOIN loyalty_discounts k ON k.id = p.kept
		JOIN subscriptions s ON s.id = k.subscription_id
		ON CONFLICT (discount_id) DO NOTHING`, incident, dupIDs, keptIDs)
	if err != nil {
		return 0, nil, fmt.Errorf("remediate: plan: %w", err)
	}
	rows, err := tx.Query(ctx, `
		SELECT incident_id, count(*) FROM loyalty_remediations
		WHERE discount_id = ANY($1) AND incident_id <> $2
		GROUP BY incident_id ORDER BY incident_id`, dupIDs, incident)
	if err != nil {
		return 0, nil, fmt.Errorf("remediate: plan: %w", err)
	}
	others = map[string]int{}
	var (
		other string
		n     int
	)
	_, err = pgx.ForEachRow(rows, []any{&other, &n}, func() error { others[other] = n; return nil })
	if err != nil {
		return 0, nil, fmt.Errorf("remediate: plan: %w", err)
	}
	return int(tag.RowsAffected()), others, nil
}

// load reads the incident's plan, by user.
func (r *Remediation) load(ctx context.Context, db pgguard.DBTX, incident string) ([]User, error) {
	rows, err := db.Query(ctx, `
		SELECT p.user_id, p.customer_id, p.kept_discount_id, p.kept_code, p.discount_id, p.promotion_code_id, p.code, d.idempotency_key
		FROM loyalty_remediations p
		JOIN loyalty_discounts d ON d.id = p.discount_id
		WHERE p.incident_id = $1
		ORDER BY p.user_id, p.planned_at, p.discount_id`, incident)
	if err != nil {
		return nil, fmt.Errorf("remediate: read the plan: %w", err)
	}
	var (
		users             []User
		user, cust, kcode string
		kept, id          int64
		promo, code, ikey string
	)
	_, err = pgx.ForEachRow(rows, []any{&user, &cust, &kept, &kcode, &id, &promo, &code, &ikey}, func() error {
		if len(users) == 0 || users[len(users)-1].UserID != user {
			users = append(users, User{UserID: user, CustomerID: cust, Kept: Code{DiscountID: kept, Code: kcode}})
		}
		u := &users[len(users)-1]
		u.Revoke = append(u.Revoke, Code{DiscountID: id, PromotionCodeID: promo, Code: code, idempotencyKey: ikey})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("remediate: read the plan: %w", err)
	}
	return users, nil
}

// inputs turns the plan into the steps' inputs, in the plan's order.
func inputs(incident string, users []User) ([]Duplicate, []Affected) {
	var dups []Duplicate
	affected := make([]Affected, len(users))
	for i, u := range users {
		affected[i] = Affected{Incident: incident, UserID: u.UserID, CustomerID: u.CustomerID, KeptCode: u.Kept.Code}
		for _, c := range u.Revoke {
			dups = append(dups, Duplicate{Incident: incident, DiscountID: c.DiscountID, UserID: u.UserID,
				PromotionCodeID: c.PromotionCodeID, Code: c.Code, IdempotencyKey: c.idempotencyKey})
		}
	}
	return dups, affected
}

// addresses fills in each affected user's email address.
func (r *Remediation) addresses(ctx context.Context, affected []Affected) error {
	if len(affected) == 0 {
		return nil
	}
	ids := make([]string, len(affected))
	for i, a := range affected {
		ids[i] = a.UserID
	}
	got, err := r.cfg.Recipients(ctx, ids)
	if err != nil {
		return fmt.Errorf("remediate: recipients: %w", err)
	}
	for i := range affected {
		affected[i].Email = got[affected[i].UserID]
	}
	return nil
}

// state says, per input, whether the ledger holds a finished record.
type state struct {
	codes   []bool // per duplicate, in inputs' order
	credits []bool // per affected user
	emails  []bool
	users   []User
}

func (r *Remediation) lookup(ctx context.Context, store idempotency.Store, dups []Duplicate, affected []Affected) (state, error) {
	var st state
	var err error
	if st.codes, err = done(ctx, store, r.deactivate, dups); err != nil {
		return st, err
	}
	if st.credits, err = done(ctx, store, r.credit, affected); err != nil {
		return st, err
	}
	st.emails, err = done(ctx, store, r.apology, affected)
	return st, err
}

// done reports, for each input, whether the ledger holds its effect applied
// or skipped: one Lookup for all of them.
func done[In, Out any](ctx context.Context, store idempotency.Store, e *idempotency.Effect[In, Out], ins []In) ([]bool, error) {
	out := make([]bool, len(ins))
	if len(ins) == 0 {
		return out, nil
	}
	keys := make([]string, len(ins))
	for i, in := range ins {
		k, _, err := e.Identity(in)
		if err != nil {
			return nil, fmt.Errorf("remediate: %w", err)
		}
		keys[i] = k.String()
	}
	recs, err := store.Lookup(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("remediate: %s: look up the ledger: %w", e.Name, err)
	}
	for i, k := range keys {
		out[i] = recs[k].State.Done()
	}
	return out, nil
}

// codesDone reports, per user, whether every duplicate of theirs is
// deactivated.
func (st state) codesDone(users []User) []bool {
	out := make([]bool, len(users))
	i := 0
	for u, user := range users {
		out[u] = true
		for range user.Revoke {
			out[u] = out[u] && st.codes[i]
			i++
		}
	}
	return out
}

// count writes the state into the report: the counts before the run, or
// after it (and each user's Done).
func (st state) count(rep *Report, before bool) {
	n := func(bs []bool) int {
		c := 0
		for _, b := range bs {
			if b {
				c++
			}
		}
		return c
	}
	steps := []*Step{&rep.Deactivate, &rep.Credit, &rep.Apology}
	for i, bs := range [][]bool{st.codes, st.credits, st.emails} {
		steps[i].Planned = len(bs)
		if before {
			steps[i].DoneBefore = n(bs)
		} else {
			steps[i].Done = n(bs)
		}
	}
	if before {
		return
	}
	codes := st.codesDone(rep.Users)
	for u := range rep.Users {
		rep.Users[u].Done = codes[u] && st.credits[u] && st.emails[u]
	}
}

func pick[T any](items []T, keep []bool) []T {
	var out []T
	for i, it := range items {
		if keep[i] {
			out = append(out, it)
		}
	}
	return out
}

// sweepConfig is the caller's sweep configuration with the remediation's
// progress lines.
func (r *Remediation) sweepConfig(step string, total int) *sweep.Config {
	var c sweep.Config
	if r.cfg.Sweep != nil {
		c = *r.cfg.Sweep
	}
	c.OnProgress = nil
	if r.cfg.Progress != nil {
		c.OnProgress = func(p sweep.Progress) {
			r.progressf("%s: %d of %d: %s\n", step, p.Candidates, total, p.Report)
		}
	}
	return &c
}

func (r *Remediation) progressf(format string, args ...any) {
	if r.cfg.Progress != nil {
		_, _ = fmt.Fprintf(r.cfg.Progress, format, args...)
	}
}
