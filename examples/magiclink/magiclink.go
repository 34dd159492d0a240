package magiclink

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
)

// Schema is the example's migration: login_requests, login_emails and its
// partial unique index.
//
//go:embed schema.sql
var Schema string

// Guard describes login_emails' partial unique index: one sent email per
// login request; failed rows are exempt.
var Guard = pgguard.Guard{
	Table:          "login_emails",
	Columns:        []string{"login_request_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"sent"},
	IndexName:      "uq_login_emails_active",
}

// Keys is the key space of the email. Version 1 keys are the login request
// id: never the user, the address or the clock, which a new login request
// shares with the old one.
var Keys = idempotency.KeySpace{Namespace: "auth.magiclink", Version: 1}

// DefaultTTL is how long a link is valid when Config.TTL is zero. It is far
// inside the provider's 24-hour dedup window, so a link still worth sending
// is always retried under a key the provider remembers.
const DefaultTTL = 15 * time.Minute

// Lease is how long a send's claim is held: well above the client's 10s
// timeout times the three in-run attempts.
const Lease = time.Minute

var (
	// ErrInvalidRequest: the request id or the address is unusable.
	// Nothing was written.
	ErrInvalidRequest = errors.New("magiclink: invalid login request")
	// ErrRequestReused: the login request id is already used for another
	// address. Nothing was written or sent.
	ErrRequestReused = errors.New("magiclink: login request id already used for another address")
	// ErrGone: the login request expired or its link was used: no email.
	ErrGone = errors.New("magiclink: login request expired or used")
	// ErrInvalidToken: Redeem got a token that is unknown, used or expired.
	ErrInvalidToken = errors.New("magiclink: invalid or expired link")
)

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{16,64}$`)

// LoginRequest is a stored login_requests row: the effect's input. The
// email is built from it alone.
type LoginRequest struct {
	ID        string
	Email     string
	Token     string
	ExpiresAt time.Time
}

// Key is the login request's idempotency key.
func Key(r LoginRequest) (idempotency.Key, error) {
	return Keys.Key(idempotency.Str("login_request", r.ID))
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
		return fmt.Errorf("magiclink: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// Config wires the program. DB, Endpoint, From and LinkURL are required.
type Config struct {
	DB *pgxpool.Pool
	// Endpoint is the email provider's send URL: POST, a JSON Message and
	// an Idempotency-Key header, answered with {"id": "<message id>"}.
	Endpoint string
	APIKey   string // sent as a bearer token
	From     string // the sender address
	// LinkURL is the page that redeems a link; the token is added as the
	// "token" query parameter.
	LinkURL string
	// TTL is how long a link is valid. Zero means DefaultTTL.
	TTL time.Duration
	// Client sends the requests; nil means httpeffect's default (10s
	// timeout, no redirects).
	Client *http.Client
	// Now is the clock of the login requests, the ledger and the executor;
	// nil means time.Now (and the database's clock for the ledger). Tests
	// pass a fake clock.
	Now func() time.Time
	// Sleep waits between in-run attempts (idempotency.Config.Sleep); nil
	// means a timer.
	Sleep func(ctx context.Context, d time.Duration) error
	// Sweep tunes the tick's sweep.
	Sweep *sweep.Config
}

// Program sends magic links.
type Program struct {
	db       *pgxpool.Pool
	endpoint string
	apiKey   string
	from     string
	link     *url.URL
	ttl      time.Duration
	now      func() time.Time
	exec     *idempotency.Executor
	effect   *idempotency.Effect[LoginRequest, httpeffect.Response]
	sweep    *sweep.Config

	// beforeRecord, when set (tests only), runs inside the completion
	// transaction before the email row is written: returning an error
	// simulates a crash after the provider sent the email.
	beforeRecord func(LoginRequest) error
}

// New returns the program.
func New(cfg Config) (*Program, error) {
	if cfg.DB == nil || cfg.Endpoint == "" || cfg.From == "" || cfg.LinkURL == "" {
		return nil, errors.New("magiclink: Config needs DB, Endpoint, From and LinkURL")
	}
	link, err := url.Parse(cfg.LinkURL)
	if err != nil || !link.IsAbs() {
		return nil, fmt.Errorf("magiclink: LinkURL %q is not an absolute URL", cfg.LinkURL)
	}
	if cfg.TTL < 0 {
		return nil, errors.New("magiclink: negative TTL")
	}
	ledger, err := pgguard.New(cfg.DB, &pgguard.Config{Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	exec, err := idempotency.NewExecutor(ledger, &idempotency.Config{Now: cfg.Now, Sleep: cfg.Sleep})
	if err != nil {
		return nil, err
	}
	p := &Program{db: cfg.DB, endpoint: cfg.Endpoint, apiKey: cfg.APIKey, from: cfg.From, link: link,
		ttl: cfg.TTL, now: cfg.Now, exec: exec, sweep: cfg.Sweep}
	if p.ttl == 0 {
		p.ttl = DefaultTTL
	}
	if p.now == nil {
		p.now = time.Now
	}
	// httpeffect's defaults for a provider that deduplicates by
	// Idempotency-Key: ExpiredRetry within a 24-hour DedupWindow, and the
	// request (method, URL, body) as the fingerprint. The body is built
	// from the stored row only, so every attempt for one login request
	// sends the same bytes, token included.
	eff := httpeffect.Effect(Keys.Namespace, Key, p.request, &httpeffect.Config{Client: cfg.Client})
	eff.Lease = Lease
	eff.OnComplete = pgguard.OnComplete(p.record)
	eff.OnFail = pgguard.OnFail(p.recordRefusal)
	p.effect = eff
	return p, nil
}

// Effect returns the email effect, for contract tests and ad hoc sweeps.
func (p *Program) Effect() *idempotency.Effect[LoginRequest, httpeffect.Response] { return p.effect }

// Executor returns the program's executor; its Store is the ledger.
func (p *Program) Executor() *idempotency.Executor { return p.exec }

// NewRequestID returns a fresh login request id, for the login form to
// carry in a hidden field: every submission of that form (a double click,
// a browser retry) is then the same login request.
func NewRequestID() string { return random(16) }

// random returns n random bytes, base64url-encoded.
func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

// message builds the email from the stored login request only.
func (p *Program) message(r LoginRequest) Message {
	u := *p.link
	q := u.Query()
	q.Set("token", r.Token)
	u.RawQuery = q.Encode()
	return Message{
		From:    p.from,
		To:      r.Email,
		Subject: "Your sign-in link",
		Text: fmt.Sprintf("Click to sign in:\n\n%s\n\nThe link works once and expires at %s UTC. "+
			"If you did not ask for it, ignore this email.\n", u.String(), r.ExpiresAt.UTC().Format("15:04")),
	}
}

// request is httpeffect's build function, called for every attempt.
func (p *Program) request(ctx context.Context, r LoginRequest) (*http.Request, error) {
	body, err := json.Marshal(p.message(r))
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

// Start stores the login request, or returns the one stored under id: the
// token is generated here, once; a repeat of id keeps the first token. It
// is one statement: ON CONFLICT DO UPDATE with a no-op update returns (and
// locks) the stored row even when it was inserted by a concurrent
// submission after this statement's snapshot, where DO NOTHING would
// return no row (hazard 4). The no-op update leaves a dead tuple per
// repeat, which a double click can afford.
func (p *Program) Start(ctx context.Context, id, email string) (LoginRequest, error) {
	email = strings.TrimSpace(email)
	if !requestIDRE.MatchString(id) || email == "" || !strings.Contains(email, "@") {
		return LoginRequest{}, ErrInvalidRequest
	}
	now := p.now()
	var (
		r    LoginRequest
		used bool
	)
	err := p.db.QueryRow(ctx, `
		INSERT INTO login_requests AS l (id, email, token, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id) DO UPDATE SET email = l.email
		RETURNING id, email, token, expires_at, used_at IS NOT NULL`,
		id, email, random(32), now, now.Add(p.ttl)).Scan(&r.ID, &r.Email, &r.Token, &r.ExpiresAt, &used)
	if err != nil {
		return LoginRequest{}, fmt.Errorf("magiclink: store login request: %w", err)
	}
	switch {
	case !strings.EqualFold(r.Email, email):
		return LoginRequest{}, ErrRequestReused
	case used || !now.Before(r.ExpiresAt):
		return r, ErrGone
	}
	return r, nil
}

// RequestLink is the "send me a link" action: it stores the login request
// (Start) and sends its email once. A repeat of id (a double click, a
// retried handler) sends nothing more: the provider is called once per
// login request, and the email carries the token stored by the first
// submission.
func (p *Program) RequestLink(ctx context.Context, id, email string) (idempotency.Result[httpeffect.Response], error) {
	r, err := p.Start(ctx, id, email)
	if err != nil {
		return idempotency.Result[httpeffect.Response]{}, err
	}
	return idempotency.Run(ctx, p.exec, p.effect, r)
}

// record writes the email row in the transaction that marks the effect
// applied. A 23505 on uq_login_emails_active means "already there".
func (p *Program) record(ctx context.Context, tx pgx.Tx, r LoginRequest, resp httpeffect.Response) error {
	if p.beforeRecord != nil {
		if err := p.beforeRecord(r); err != nil {
			return err
		}
	}
	key, err := Key(r)
	if err != nil {
		return err
	}
	var sent struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(resp.Body, &sent) // no id in the answer: message_id stays NULL
	_, err = pgguard.InsertOnce(ctx, tx, Guard,
		`INSERT INTO login_emails (login_request_id, status, message_id, idempotency_key) VALUES ($1, 'sent', NULLIF($2, ''), $3)`,
		r.ID, sent.ID, key.String())
	return err
}

// recordRefusal writes a failed email row when the provider refused the
// address (a 4xx), in the transaction that marks the ledger record failed.
func (p *Program) recordRefusal(ctx context.Context, tx pgx.Tx, r LoginRequest, cause error) error {
	key, err := Key(r)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO login_emails (login_request_id, status, idempotency_key, reason) VALUES ($1, 'failed', $2, $3)`,
		r.ID, key.String(), cause.Error()); err != nil {
		return fmt.Errorf("magiclink: record refusal of %s: %w", r.ID, err)
	}
	return nil
}

// Candidates returns the login requests still worth an email: not used,
// not expired, and without an email row (never sent, not refused).
func (p *Program) Candidates(ctx context.Context) ([]LoginRequest, error) {
	rows, err := p.db.Query(ctx, `
		SELECT r.id, r.email, r.token, r.expires_at FROM login_requests r
		WHERE r.used_at IS NULL AND r.expires_at > $1
		  AND NOT EXISTS (SELECT 1 FROM login_emails e WHERE e.login_request_id = r.id)
		ORDER BY r.created_at, r.id`, p.now())
	if err != nil {
		return nil, fmt.Errorf("magiclink: candidates: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[LoginRequest])
}

// Tick is the catch-up job, run every minute or so: it sends the links a
// handler could not (the provider was down, the process died), while they
// are valid. It shares the key with RequestLink, so however they overlap,
// one email per login request.
func (p *Program) Tick(ctx context.Context) (sweep.Report, error) {
	cands, err := p.Candidates(ctx)
	if err != nil {
		return sweep.Report{}, err
	}
	return sweep.Run(ctx, p.exec, p.effect, sweep.Slice(cands), p.sweep)
}

// Redeem signs in with a link's token: it marks the login request used and
// returns its address. A token works once, before it expires.
func (p *Program) Redeem(ctx context.Context, token string) (email string, err error) {
	err = p.db.QueryRow(ctx, `UPDATE login_requests SET used_at = $2
		WHERE token = $1 AND used_at IS NULL AND expires_at > $2 RETURNING email`, token, p.now()).Scan(&email)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", ErrInvalidToken
	}
	if err != nil {
		return "", fmt.Errorf("magiclink: redeem: %w", err)
	}
	return email, nil
}

// Handler serves POST with the form fields request_id and email, the login
// form's "send me a link" button:
//
//	answer                                            status
//	request_id or email missing or malformed          400, nothing written
//	request_id already used for another address       409, nothing sent
//	login request expired or already used             410, nothing sent
//	applied, already applied                          200: "check your inbox"
//	in flight (another click is sending it)           202: "on its way"
//	retryable, not due, store error                   503 with Retry-After; Tick sends it later while the link is valid
//	refused address, mismatch, in doubt               500; the record stays for an operator
//
// In flight is answered 202, not the 503 a queue would get: the other
// submission holds the claim and is sending the email; should it fail,
// Tick sends it.
func (p *Program) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		res, err := p.RequestLink(r.Context(), r.PostFormValue("request_id"), r.PostFormValue("email"))
		switch {
		case errors.Is(err, ErrInvalidRequest):
			http.Error(w, "invalid login request", http.StatusBadRequest)
			return
		case errors.Is(err, ErrRequestReused):
			http.Error(w, "this login form was used for another address; reload it", http.StatusConflict)
			return
		case errors.Is(err, ErrGone):
			http.Error(w, "this login request expired; reload the form", http.StatusGone)
			return
		case res.Outcome == 0:
			// Start failed: nothing was claimed.
			w.Header().Set("Retry-After", "1")
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		if res.Outcome == idempotency.OutcomeInFlight {
			w.WriteHeader(http.StatusAccepted)
			_, _ = fmt.Fprintln(w, "Your sign-in link is on its way.")
			return
		}
		d := res.Disposition()
		switch d.Action {
		case idempotency.Ack:
			_, _ = fmt.Fprintln(w, "Check your inbox for a sign-in link.")
		case idempotency.Retry:
			w.Header().Set("Retry-After", retryAfter(d.Delay))
			http.Error(w, "we could not send the link yet; try again shortly", http.StatusServiceUnavailable)
		default:
			http.Error(w, "we could not send a link to this address", http.StatusInternalServerError)
		}
	})
}

// retryAfter renders a delay as Retry-After seconds, at least 1.
func retryAfter(d time.Duration) string {
	return fmt.Sprint(max(int64((d+time.Second-1)/time.Second), 1))
}
