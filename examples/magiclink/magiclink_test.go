package magiclink

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type fixture struct {
	ctx   context.Context
	pool  *pgxpool.Pool
	mail  *mailProvider
	clock *clocktest.Clock
	p     *Program
	srv   *httptest.Server // the login form's handler
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, Migrate(ctx, pool))
	clock := clocktest.New()
	mail := newMailProvider(t, clock.Now)
	p, err := New(Config{DB: pool, Endpoint: mail.endpoint(), APIKey: apiKey, From: "login@app.example",
		LinkURL: "https://app.example/login/callback", Now: clock.Now, Sleep: clock.Sleep})
	require.NoError(t, err)
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)
	return &fixture{ctx: ctx, pool: pool, mail: mail, clock: clock, p: p, srv: srv}
}

type answer struct {
	Status     int
	RetryAfter string
	Body       string
}

// submit posts the login form, as the browser does when "send link" is
// clicked.
func (f *fixture) submit(t *testing.T, requestID, email string) answer {
	t.Helper()
	resp, err := http.PostForm(f.srv.URL, url.Values{"request_id": {requestID}, "email": {email}})
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{resp.StatusCode, resp.Header.Get("Retry-After"), string(body)}
}

type storedRequest struct {
	ID    string
	Email string
	Token string
}

func (f *fixture) loginRequests(t *testing.T) []storedRequest {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT id, email, token FROM login_requests ORDER BY created_at, id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[storedRequest])
	require.NoError(t, err)
	return out
}

type emailRow struct {
	LoginRequest string
	Status       string
	MessageID    string
}

func (f *fixture) emailRows(t *testing.T) []emailRow {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT login_request_id, status, coalesce(message_id, '') FROM login_emails ORDER BY id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[emailRow])
	require.NoError(t, err)
	return out
}

func (f *fixture) storedToken(t *testing.T, id string) string {
	t.Helper()
	var token string
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT token FROM login_requests WHERE id = $1`, id).Scan(&token))
	return token
}

// A double click: the second submission of the same form arrives while the
// first is sending. One email, carrying the token stored before it was
// sent; a later retry of the handler sends nothing.
func TestDoubleClickSendsOneEmail(t *testing.T) {
	t.Parallel()
	f := setup(t)
	id := NewRequestID()
	entered, release := f.mail.HoldNext()
	first := make(chan answer, 1)
	go func() {
		defer close(first)
		resp, err := http.PostForm(f.srv.URL, url.Values{"request_id": {id}, "email": {"ada@example.com"}})
		if err != nil {
			return
		}
		defer resp.Body.Close()
		first <- answer{Status: resp.StatusCode}
	}()
	<-entered // the first click's email is at the provider

	// The token was stored before the email went out, and the email in
	// flight carries it.
	stored := f.storedToken(t, id)
	inFlight := f.mail.received()
	require.Len(t, inFlight, 1)
	require.Equal(t, stored, tokenIn(t, inFlight[0].Message))

	second := f.submit(t, id, "ada@example.com")
	require.Equal(t, http.StatusAccepted, second.Status, "the second click meets the first one's claim")
	release()
	require.Equal(t, answer{Status: http.StatusOK}, <-first)

	// The browser retries the request once more: answered from the ledger.
	third := f.submit(t, id, "ada@example.com")
	require.Equal(t, http.StatusOK, third.Status)
	require.Len(t, f.mail.received(), 1, "one request reached the provider")
	require.Equal(t, 1, f.mail.Effects())
	require.Equal(t, stored, tokenIn(t, f.mail.sentEmails()[0].Message))
	require.Len(t, f.loginRequests(t), 1)
	require.Equal(t, []emailRow{{id, "sent", "msg_001"}}, f.emailRows(t))

	email, err := f.p.Redeem(f.ctx, stored)
	require.NoError(t, err)
	require.Equal(t, "ada@example.com", email)
}

// A new login request (the form loaded again) is a new intent: a second
// email with a second token. Each token works once.
func TestNewLoginRequestSendsANewLink(t *testing.T) {
	t.Parallel()
	f := setup(t)
	first, second := NewRequestID(), NewRequestID()
	require.Equal(t, http.StatusOK, f.submit(t, first, "ada@example.com").Status)
	require.Equal(t, http.StatusOK, f.submit(t, second, "ada@example.com").Status)

	sent := f.mail.sentEmails()
	require.Len(t, sent, 2)
	t1, t2 := tokenIn(t, sent[0].Message), tokenIn(t, sent[1].Message)
	require.NotEqual(t, t1, t2)
	require.Equal(t, f.storedToken(t, first), t1)
	require.Equal(t, f.storedToken(t, second), t2)
	require.Equal(t, "auth.magiclink:v1:login_request="+first, sent[0].Key)
	require.Equal(t, "auth.magiclink:v1:login_request="+second, sent[1].Key)

	_, err := f.p.Redeem(f.ctx, t1)
	require.NoError(t, err)
	_, err = f.p.Redeem(f.ctx, t1)
	require.ErrorIs(t, err, ErrInvalidToken, "a link works once")
	_, err = f.p.Redeem(f.ctx, t2)
	require.NoError(t, err)
}

// The email went out and the handler died before recording it. The
// browser retries after the lease: the handler generates a fresh token,
// but the stored one is mailed again (same body), so the provider replays
// the first email: one email, and the token it carries is the one that
// signs in.
func TestRetryAfterTheEmailWentOutMailsTheStoredToken(t *testing.T) {
	t.Parallel()
	f := setup(t)
	id := NewRequestID()
	f.p.beforeRecord = func(LoginRequest) error { return errors.New("handler killed after the provider answered") }
	res, err := f.p.RequestLink(f.ctx, id, "ada@example.com")
	require.Error(t, err)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	require.Equal(t, 1, f.mail.Effects())
	f.p.beforeRecord = nil
	stored := f.storedToken(t, id)

	// Inside the dead handler's lease: in flight, nothing sent.
	require.Equal(t, http.StatusAccepted, f.submit(t, id, "ada@example.com").Status)

	f.clock.Advance(Lease + time.Second)
	require.Equal(t, http.StatusOK, f.submit(t, id, "ada@example.com").Status)
	require.Equal(t, 1, f.mail.Effects(), "one email")
	require.Equal(t, 1, f.mail.Replays(), "the retry was answered with the first email")
	received := f.mail.received()
	require.Len(t, received, 2)
	for _, r := range received {
		require.Equal(t, stored, tokenIn(t, r.Message), "every attempt carries the stored token")
	}
	require.Equal(t, []emailRow{{id, "sent", "msg_001"}}, f.emailRows(t))
	_, err = f.p.Redeem(f.ctx, stored)
	require.NoError(t, err)
}

// The provider is down when the user clicks: the handler answers 503 with
// the provider's Retry-After. The catch-up tick sends the stored link once
// the provider is due again, and leaves expired requests alone.
func TestProviderDownThenTickSendsTheStoredLink(t *testing.T) {
	t.Parallel()
	f := setup(t)
	stale := NewRequestID()
	_, err := f.p.Start(f.ctx, stale, "old@example.com")
	require.NoError(t, err)
	f.clock.Advance(DefaultTTL) // stale's link has expired, unsent

	id := NewRequestID()
	f.mail.AnswerNext(http.StatusServiceUnavailable) // with Retry-After: 30
	a := f.submit(t, id, "ada@example.com")
	require.Equal(t, http.StatusServiceUnavailable, a.Status)
	require.Equal(t, "30", a.RetryAfter)
	require.Zero(t, f.mail.Effects())

	// Not due yet: the tick makes no request.
	rep, err := f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Candidates, "only the unexpired request")
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeNotDue])
	require.Len(t, f.mail.received(), 1)

	f.clock.Advance(30 * time.Second)
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied])
	sent := f.mail.sentEmails()
	require.Len(t, sent, 1)
	require.Equal(t, "ada@example.com", sent[0].To)
	require.Equal(t, f.storedToken(t, id), tokenIn(t, sent[0].Message))

	// The user clicks again after the tick sent it: nothing more.
	require.Equal(t, http.StatusOK, f.submit(t, id, "ada@example.com").Status)
	require.Equal(t, 1, f.mail.Effects())
	rep, err = f.p.Tick(f.ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Candidates)
}

func TestBadSubmissionsWriteAndSendNothing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	id := NewRequestID()
	require.Equal(t, http.StatusBadRequest, f.submit(t, "", "ada@example.com").Status)
	require.Equal(t, http.StatusBadRequest, f.submit(t, "short", "ada@example.com").Status)
	require.Equal(t, http.StatusBadRequest, f.submit(t, id, "").Status)
	require.Empty(t, f.loginRequests(t))

	require.Equal(t, http.StatusOK, f.submit(t, id, "ada@example.com").Status)
	// The same form replayed for another address: refused, nothing sent.
	require.Equal(t, http.StatusConflict, f.submit(t, id, "eve@example.com").Status)
	// Used, then submitted again: gone.
	_, err := f.p.Redeem(f.ctx, f.storedToken(t, id))
	require.NoError(t, err)
	require.Equal(t, http.StatusGone, f.submit(t, id, "ada@example.com").Status)

	require.Equal(t, 1, f.mail.Effects())
	require.Len(t, f.loginRequests(t), 1)
	require.True(t, strings.HasPrefix(f.mail.sentEmails()[0].To, "ada@"))
}

// Twenty submissions of one form at once: every one gets the row the first
// stored, with its token (Start's ON CONFLICT DO UPDATE returns the stored
// row, where DO NOTHING would return none).
func TestConcurrentStartsShareOneToken(t *testing.T) {
	t.Parallel()
	f := setup(t)
	id := NewRequestID()
	const n = 20
	tokens := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := f.p.Start(f.ctx, id, "ada@example.com")
			tokens[i], errs[i] = r.Token, err
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	stored := f.storedToken(t, id)
	for _, tok := range tokens {
		require.Equal(t, stored, tok)
	}
	require.Len(t, f.loginRequests(t), 1)
}
