package gettingstarted

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// snippet:gs-testmain
func TestMain(m *testing.M) { pgtest.Main(m) }

// end snippet

// snippet:gs-welcome-contract
func TestWelcomeEmailContract(t *testing.T) {
	// A stand-in for the mail API. It deduplicates by Idempotency-Key, as
	// the real one does, and counts the emails it sent apart from the
	// requests it received.
	mail := httpfake.New(nil)
	defer mail.Close()

	pool := pgtest.Pool(t) // a schema of this test's own, dropped when it ends
	if err := pgguard.Migrate(context.Background(), pool, nil); err != nil {
		t.Fatal(err)
	}
	effecttest.Run(t, effecttest.Case[Signup, httpeffect.Response]{
		Effect: NewWelcomeEmail(mail.URL(), "test-key"), // exactly as production builds it
		Inputs: []Signup{{"u1", "a@example.com"}, {"u2", "b@example.com"}, {"u3", "c@example.com"}, {"u4", "d@example.com"}},
		Mutate: func(s Signup) Signup { s.Email = "other+" + s.Email; return s }, // same key, other payload
		NewStore: func(now func() time.Time) idempotency.Store {
			ledger, err := pgguard.New(pool, &pgguard.Config{Now: now}) // the test's clock
			if err != nil {
				t.Fatal(err)
			}
			return ledger
		},
		Effects: mail.Effects, // distinct emails, not requests
	})
}

// end snippet

// snippet:gs-referral-contract
func TestReferralCreditContract(t *testing.T) {
	fake := stripefake.New() // Stripe's idempotency rules, in process
	defer fake.Close()

	ctx := context.Background()
	pool := pgtest.Pool(t)
	if err := pgguard.Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, ReferralCreditsSQL); err != nil { // OnComplete writes there
		t.Fatal(err)
	}
	effecttest.Run(t, effecttest.Case[Referral, stripeeffect.CreditResult]{
		Effect: NewReferralCredit(stripeeffect.NewAPI("sk_test", &stripeeffect.APIConfig{URL: fake.URL()})),
		Inputs: []Referral{{"u1", "cus_1", 1000}, {"u2", "cus_1", 1000}, {"u3", "cus_2", 1000}, {"u4", "cus_3", 500}},
		Mutate: func(r Referral) Referral { r.CreditCents += 100; return r },
		NewStore: func(now func() time.Time) idempotency.Store {
			ledger, err := pgguard.New(pool, &pgguard.Config{Now: now})
			if err != nil {
				t.Fatal(err)
			}
			return ledger
		},
		Effects: func() int { return fake.Created(stripefake.KindCustomerBalanceTransaction) },
	})
}

// end snippet

// snippet:gs-guard-contract
func TestReferralCreditsGuard(t *testing.T) {
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: ReferralCredits, // the value production uses
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			_, err := db.Exec(ctx, ReferralCreditsSQL)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO referral_credits (referred_user_id, stripe_txn_id, amount_cents, status)
				VALUES ($1, 'cbtxn_test', 1000, $2)`, []any{key[0], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("user_%d", i)} },
		ExemptStatuses: []string{"revoked"},
	})
}

// end snippet

// message is a delivery of the fake broker: it records how it was settled.
type message struct {
	body    []byte
	settled []string
}

func (m *message) Body() []byte { return m.body }
func (m *message) Ack() error   { m.settled = append(m.settled, "ack"); return nil }
func (m *message) Nack(d time.Duration) error {
	m.settled = append(m.settled, fmt.Sprintf("nack %v", d))
	return nil
}
func (m *message) DeadLetter(reason string) error {
	m.settled = append(m.settled, "dead_letter "+reason)
	return nil
}

// The guide's service end to end: three deliveries of one signup send one
// email; two nightly sweeps credit each paid referral once and write its
// row.
func TestTheGuidesServiceSendsAndCreditsOnce(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	exec, err := NewExecutor(ctx, pool)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, Schema+ReferralCreditsSQL)
	require.NoError(t, err)

	mail := httpfake.New(nil)
	defer mail.Close()
	welcome := NewWelcomeEmail(mail.URL(), "test-key")
	for range 3 {
		m := &message{body: []byte(`{"user_id": "u1", "email": "ada@example.com"}`)}
		require.NoError(t, HandleSignup(ctx, exec, welcome, m))
		require.Equal(t, []string{"ack"}, m.settled)
	}
	bad := &message{body: []byte(`{"user_id": ""}`)}
	require.NoError(t, HandleSignup(ctx, exec, welcome, bad))
	require.Len(t, bad.settled, 1)
	require.Contains(t, bad.settled[0], "dead_letter invalid: ")
	require.Equal(t, 1, mail.Requests(), "one request for three deliveries")
	require.Equal(t, 1, mail.Effects())

	fake := stripefake.New()
	defer fake.Close()
	credit := NewReferralCredit(stripeeffect.NewAPI("sk_test", &stripeeffect.APIConfig{URL: fake.URL()}))
	_, err = pool.Exec(ctx, `INSERT INTO referrals VALUES
		('u1', 'cus_1', 1000, now()), ('u2', 'cus_1', 1000, now()), ('u3', 'cus_2', 2500, now()), ('u4', 'cus_2', 1000, NULL)`)
	require.NoError(t, err)
	for night := range 2 {
		report, err := CreditReferrals(ctx, pool, exec, credit)
		require.NoError(t, err)
		want := 3 // the three paid referrals on the first night; none left on the second
		if night == 1 {
			want = 0
		}
		require.Equal(t, want, report.Candidates, "night %d: %v", night, report)
		require.Equal(t, want, report.Outcomes[idempotency.OutcomeApplied], "night %d: %v", night, report)
	}
	require.Equal(t, 3, fake.Created(stripefake.KindCustomerBalanceTransaction))
	require.Equal(t, int64(-2000), fake.CustomerBalance("cus_1"))
	var rows int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM referral_credits WHERE status = 'credited'`).Scan(&rows))
	require.Equal(t, 3, rows)
}
