package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/examples/applyloyalty"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// mailKeys is a mail receiver that sends once per Idempotency-Key.
type mailKeys struct {
	mu       sync.Mutex
	keys     map[string]bool
	requests int
}

func (m *mailKeys) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests++
	k := r.Header.Get("Idempotency-Key")
	if k == "" {
		http.Error(w, "Idempotency-Key required", http.StatusBadRequest)
		return
	}
	if m.keys[k] {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	m.keys[k] = true
	_, _ = fmt.Fprint(w, `{"id":"msg"}`)
}

func (m *mailKeys) counts() (sent, requests int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys), m.requests
}

type command struct {
	env  map[string]string
	args []string
}

func (c command) run(t *testing.T, extra ...string) (int, string, string) {
	t.Helper()
	var out, errs bytes.Buffer
	code := run(context.Background(), append(append([]string{}, c.args...), extra...), &out, &errs, func(k string) string { return c.env[k] })
	return code, out.String(), errs.String()
}

// TestDryRunThenRunThenRunAgain seeds three subscribers, two of them with
// duplicate codes, and drives the command as an operator would.
func TestDryRunThenRunThenRunAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.ConnString(t)
	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, applyloyalty.Migrate(ctx, pool))
	_, err = pool.Exec(ctx, `DROP INDEX uq_loyalty_discounts_active`) // as before the fix
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE TABLE users (id text PRIMARY KEY, email text);
		INSERT INTO users VALUES ('ann', 'ann@example.test'), ('bob', 'bob@example.test'), ('cyd', 'cyd@example.test');
		INSERT INTO subscriptions (id, user_id, customer_id, plan, started_at)
		SELECT 'sub_' || u, u, 'cus_' || u, 'pro', '2024-05-01' FROM unnest(ARRAY['ann', 'bob', 'cyd']) u`)
	require.NoError(t, err)

	fake := stripefake.New()
	t.Cleanup(fake.Close)
	fake.AddCoupon("anniv10", 10)
	api := stripeeffect.NewAPI("sk_test_cmd", &stripeeffect.APIConfig{URL: fake.URL()})
	for i, row := range []struct{ user, code string }{
		{"ann", "ANN-1"}, {"ann", "ANN-2"}, {"bob", "BOB-1"}, {"cyd", "CYD-1"}, {"cyd", "CYD-2"},
	} {
		params := &stripe.PromotionCodeParams{Coupon: stripe.String("anniv10"), Code: stripe.String(row.code), Customer: stripe.String("cus_" + row.user)}
		params.SetIdempotencyKey("anniv-" + row.code)
		pc, err := api.PromotionCodes.New(params)
		require.NoError(t, err)
		_, err = pool.Exec(ctx, `INSERT INTO loyalty_discounts (user_id, subscription_id, milestone, promotion_code_id, code, status, idempotency_key, created_at)
			VALUES ($1, 'sub_' || $1, 12, $2, $3, 'applied', $4, timestamptz '2025-06-30 23:45Z' + $5 * interval '10 minutes')`,
			row.user, pc.ID, row.code, "anniv-"+row.code, i)
		require.NoError(t, err)
	}
	mail := &mailKeys{keys: map[string]bool{}}
	mailSrv := httptest.NewServer(mail)
	t.Cleanup(mailSrv.Close)

	cmd := command{
		env: map[string]string{"DATABASE_URL": dsn, "STRIPE_SECRET_KEY": "sk_test_cmd", "MAIL_API_KEY": "k"},
		args: []string{"-incident", "INC-7", "-credit", "2900", "-currency", "usd", "-mail-url", mailSrv.URL + "/v1/emails",
			"-from", "care@example.test", "-stripe-url", fake.URL(), "-rate", "0"},
	}
	seeded := fake.RequestCount()

	code, out, errs := cmd.run(t, "--dry-run")
	t.Logf("dry run:\n%s", out)
	require.Equal(t, exitOK, code, errs)
	require.Contains(t, out, "keep ANN-1")
	require.Contains(t, out, "revoke ANN-2")
	require.Contains(t, out, "would credit        2 customers 29.00 USD each, 58.00 USD in all")
	require.Contains(t, out, "cost: 6 provider calls, 58.00 USD in credits")
	require.Equal(t, seeded, fake.RequestCount(), "a dry run sends nothing")

	code, out, errs = cmd.run(t)
	t.Logf("run:\n%s", out)
	require.Equal(t, exitOK, code, errs)
	require.Contains(t, out, "complete: 2 users remediated, 6 provider calls this run")
	require.Equal(t, 2, fake.Created(stripefake.KindCustomerBalanceTransaction))
	sent, requests := mail.counts()
	require.Equal(t, 2, sent)

	before := fake.RequestCount()
	code, out, errs = cmd.run(t)
	require.Equal(t, exitOK, code, errs)
	require.Contains(t, out, "complete: 2 users remediated, 0 provider calls this run")
	require.Equal(t, before, fake.RequestCount())
	_, again := mail.counts()
	require.Equal(t, requests, again)
}

func TestUsage(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://x", "STRIPE_SECRET_KEY": "sk"}
	full := []string{"-incident", "INC-7", "-credit", "2900", "-mail-url", "http://mail", "-from", "a@b"}
	for name, c := range map[string]command{
		"no incident":   {env, []string{"-credit", "2900", "-mail-url", "http://mail", "-from", "a@b"}},
		"no credit":     {env, []string{"-incident", "INC-7", "-mail-url", "http://mail", "-from", "a@b"}},
		"no mail":       {env, []string{"-incident", "INC-7", "-credit", "2900", "-from", "a@b"}},
		"no database":   {map[string]string{"STRIPE_SECRET_KEY": "sk"}, full},
		"no stripe key": {map[string]string{"DATABASE_URL": "postgres://x"}, full},
		"extra args":    {env, append(full, "now")},
		"unknown flag":  {env, append(full, "-force")},
	} {
		code, _, errs := c.run(t)
		require.Equal(t, exitUsage, code, name)
		require.True(t, strings.Contains(errs, "usage:"), "%s: %s", name, errs)
	}
}
