package remediate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/examples/applyloyalty"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		os.Exit(childMain()) // a remediation process that kills itself (process_test.go)
	}
	pgtest.Main(m)
}

const (
	incident     = "INC-2025-07-LOYALTY-DUP"
	coupon       = "anniv10"
	creditAmount = 2900 // one month of Pro, in cents
	subscribers  = 200

	stripeAPIKey  = "sk_test_remediate"
	mailFrom      = "care@example.test"
	recipientsSQL = `SELECT id, email FROM users WHERE id = ANY($1)`
)

// The write-up's two users and their codes: the first of each pair is kept.
const (
	eil = "u007"
	hsy = "u014"
	// overlapDup: the deploy's overlap, a duplicate written through the
	// ledger by the new job (its record names the duplicate's code).
	overlapDup = "u084"
	// ledgerKept: the kept row was written through the ledger, the
	// duplicate by the old job (the record names the kept code).
	ledgerKept = "u091"
)

var namedCodes = map[string][2]string{
	eil: {"EIL-ANNIV-Q4R7P", "EIL-ANNIV-X9M2B"},
	hsy: {"HSY-ANNIV-A2X9F", "HSY-ANNIV-B7K3L"},
}

// affectedUser reports whether subscriber i (1-based) is one of the 28 with
// two active rows and two live codes.
func affectedUser(i int) bool { return i%7 == 0 }

// bucket is the old job's key period: its Idempotency-Key was derived from
// floor(now / 30 days).
const bucket = 30 * 24 * time.Hour

// firstTick is when the old job gave subscriber i its code.
func firstTick(i int) time.Time {
	return time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Hour)
}

// overlappingTicks are the two ticks that gave an affected subscriber two
// codes: 30 minutes apart, on either side of a bucket boundary, so the old
// job computed two keys and Stripe rightly made two codes.
func overlappingTicks(i int) (time.Time, time.Time) {
	secs := int64(bucket / time.Second)
	boundary := time.Unix((firstTick(i).Unix()/secs+1)*secs, 0).UTC()
	first := boundary.Add(-20*time.Minute + time.Duration(i)*time.Second)
	return first, first.Add(30 * time.Minute)
}

type pair struct {
	keptPromo, keptCode string
	dupPromo, dupCode   string
}

type fixture struct {
	ctx     context.Context
	dsn     string
	pool    *pgxpool.Pool
	fake    *stripefake.Server
	api     *client.API
	clock   *clocktest.Clock
	mail    *mailProvider
	loyalty *applyloyalty.Program

	affected map[string]pair   // user -> codes
	single   map[string]string // the 172 others: user -> promotion code id
}

// setup creates loyalty_discounts from applyloyalty's own migration and then
// drops its unique index: the table as production had it before the fix,
// when the duplicates were written. The plan table is not created: Run's
// callers migrate first (the command does), DryRun migrates in its own
// rolled-back transaction.
func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.ConnString(t)
	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, applyloyalty.Migrate(ctx, pool))
	_, err = pool.Exec(ctx, `DROP INDEX uq_loyalty_discounts_active`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE TABLE users (id text PRIMARY KEY, email text)`)
	require.NoError(t, err)

	fake := stripefake.New()
	t.Cleanup(fake.Close)
	fake.AddCoupon(coupon, 10)
	clock := clocktest.New()
	api := stripeeffect.NewAPI(stripeAPIKey, &stripeeffect.APIConfig{URL: fake.URL()})
	loyalty, err := applyloyalty.New(applyloyalty.Config{DB: pool, Stripe: api, Coupon: coupon, Now: clock.Now})
	require.NoError(t, err)
	return &fixture{ctx: ctx, dsn: dsn, pool: pool, fake: fake, api: api, clock: clock,
		mail: newMailProvider(t, clock.Now), loyalty: loyalty}
}

// seedIncident reproduces the incident's shape: 200 Pro subscribers past
// 12 months, each with an active loyalty discount and a live code at
// Stripe; 28 of them with a second active row and a second live code.
func (f *fixture) seedIncident(t *testing.T) {
	t.Helper()
	_, err := f.pool.Exec(f.ctx, `
		INSERT INTO subscriptions (id, user_id, customer_id, plan, started_at)
		SELECT 'sub_u' || lpad(g::text, 3, '0'), 'u' || lpad(g::text, 3, '0'), 'cus_u' || lpad(g::text, 3, '0'),
		       'pro', timestamptz '2024-05-01 00:00Z' + g * interval '1 hour'
		FROM generate_series(1, $1::int) g`, subscribers)
	require.NoError(t, err)
	_, err = f.pool.Exec(f.ctx, `
		INSERT INTO users (id, email) SELECT 'u' || lpad(g::text, 3, '0'), 'u' || lpad(g::text, 3, '0') || '@example.test'
		FROM generate_series(1, $1::int) g`, subscribers)
	require.NoError(t, err)

	f.affected, f.single = map[string]pair{}, map[string]string{}
	for i := 1; i <= subscribers; i++ {
		user := fmt.Sprintf("u%03d", i)
		at, overlap := firstTick(i), time.Time{}
		if affectedUser(i) {
			at, overlap = overlappingTicks(i)
		}
		codes, named := namedCodes[user]
		if !named {
			codes = [2]string{fmt.Sprintf("ANNIV-%s-A", user), fmt.Sprintf("ANNIV-%s-B", user)}
		}
		switch {
		case !affectedUser(i) && i <= 3:
			// Rewarded by the new job through the ledger.
			f.single[user], _ = f.throughLedger(t, user, at)
		case !affectedUser(i):
			f.single[user] = f.legacy(t, user, codes[0], at)
		case user == hsy:
			// The duplicate's row has the lower id but the later
			// created_at: the audit orders by created_at first.
			var p pair
			p.dupPromo, p.dupCode = f.legacy(t, user, codes[1], overlap), codes[1]
			p.keptPromo, p.keptCode = f.legacy(t, user, codes[0], at), codes[0]
			f.affected[user] = p
		case user == overlapDup:
			var p pair
			p.keptPromo, p.keptCode = f.legacy(t, user, codes[0], at), codes[0]
			p.dupPromo, p.dupCode = f.throughLedger(t, user, overlap)
			f.affected[user] = p
		case user == ledgerKept:
			var p pair
			p.keptPromo, p.keptCode = f.throughLedger(t, user, at)
			p.dupPromo, p.dupCode = f.legacy(t, user, codes[1], overlap), codes[1]
			f.affected[user] = p
		default:
			var p pair
			p.keptPromo, p.keptCode = f.legacy(t, user, codes[0], at), codes[0]
			p.dupPromo, p.dupCode = f.legacy(t, user, codes[1], overlap), codes[1]
			f.affected[user] = p
		}
	}
	require.Len(t, f.affected, 28)
	require.Len(t, f.single, 172)
}

// legacy makes what the old job made: a code at Stripe under a key derived
// from the clock (a 30-day bucket), and a row carrying that key.
func (f *fixture) legacy(t *testing.T, user, code string, at time.Time) string {
	t.Helper()
	key := fmt.Sprintf("anniv-%s-%d", user, at.Unix()/int64(bucket/time.Second))
	params := &stripe.PromotionCodeParams{Coupon: stripe.String(coupon), Code: stripe.String(code),
		Customer: stripe.String("cus_" + user), MaxRedemptions: stripe.Int64(1)}
	params.SetIdempotencyKey(key)
	pc, err := f.api.PromotionCodes.New(params)
	require.NoError(t, err)
	_, err = f.pool.Exec(f.ctx, `
		INSERT INTO loyalty_discounts (user_id, subscription_id, milestone, promotion_code_id, code, status, idempotency_key, created_at)
		VALUES ($1, 'sub_' || $1, 12, $2, $3, 'applied', $4, $5)`, user, pc.ID, code, key, at)
	require.NoError(t, err)
	return pc.ID
}

// throughLedger makes what applyloyalty's job makes: a code under the
// anniversary key, its ledger record and its row (no index: a plain insert).
func (f *fixture) throughLedger(t *testing.T, user string, at time.Time) (promoID, code string) {
	t.Helper()
	c := applyloyalty.Candidate{UserID: user, SubscriptionID: "sub_" + user, CustomerID: "cus_" + user, Milestone: applyloyalty.MilestoneMonths}
	res, err := idempotency.Run(f.ctx, f.loyalty.Executor(), f.loyalty.Effect(), c)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	_, err = f.pool.Exec(f.ctx, `UPDATE loyalty_discounts SET created_at = $2 WHERE promotion_code_id = $1`, res.Value.ID, at)
	require.NoError(t, err)
	return res.Value.ID, res.Value.Code
}

// remediation builds the sweep as the command does; Progress goes to the
// test log.
func (f *fixture) remediation(t *testing.T, cfg *Config) *Remediation {
	t.Helper()
	c := Config{}
	if cfg != nil {
		c = *cfg
	}
	c.DB, c.Stripe, c.Now = f.pool, f.api, f.clock.Now
	c.Mail = Mail{Endpoint: f.mail.endpoint(), APIKey: mailAPIKey, From: mailFrom}
	c.Credit = Credit{Amount: creditAmount, Currency: "usd"}
	c.Recipients = RecipientsQuery(f.pool, recipientsSQL)
	if c.Progress == nil {
		c.Progress = testWriter{t}
	}
	r, err := New(c)
	require.NoError(t, err)
	return r
}

func (f *fixture) migrate(t *testing.T) {
	t.Helper()
	require.NoError(t, Migrate(f.ctx, f.pool))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// calls counts the provider calls so far: promotion code updates and
// balance transactions at Stripe, requests at the mail provider, and every
// Stripe request.
type calls struct{ deactivate, credit, mail, stripe int }

func (f *fixture) calls() calls {
	return calls{
		deactivate: f.fake.Calls(stripefake.OpUpdate, stripefake.KindPromotionCode),
		credit:     f.fake.Calls(stripefake.OpCreate, stripefake.KindCustomerBalanceTransaction),
		mail:       f.mail.Requests(),
		stripe:     f.fake.RequestCount(),
	}
}

func (c calls) since(before calls) calls {
	return calls{c.deactivate - before.deactivate, c.credit - before.credit, c.mail - before.mail, c.stripe - before.stripe}
}

type rowState struct {
	user, promo, status string
	revoked             bool
}

// rows returns every loyalty_discounts row, by id.
func (f *fixture) rows(t *testing.T) map[int64]rowState {
	t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT id, user_id, promotion_code_id, status, revoked_at IS NOT NULL FROM loyalty_discounts`)
	require.NoError(t, err)
	out := map[int64]rowState{}
	var (
		id int64
		r  rowState
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &r.user, &r.promo, &r.status, &r.revoked}, func() error { out[id] = r; return nil })
	require.NoError(t, err)
	return out
}

// activeAtStripe lists every promotion code at Stripe through the real
// client and says whether it is active.
func (f *fixture) activeAtStripe(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	it := f.api.PromotionCodes.List(&stripe.PromotionCodeListParams{ListParams: stripe.ListParams{Limit: stripe.Int64(100)}})
	for it.Next() {
		out[it.PromotionCode().ID] = it.PromotionCode().Active
	}
	require.NoError(t, it.Err())
	return out
}

// requireRemediated checks the state every way of running the sweep must
// end in, against the rows as seeded (before).
func (f *fixture) requireRemediated(t *testing.T, before map[int64]rowState) {
	t.Helper()
	after := f.rows(t)
	require.Len(t, after, len(before))
	revoked := 0
	for id, was := range before {
		now := after[id]
		p, isAffected := f.affected[was.user]
		switch {
		case !isAffected:
			require.Equal(t, was, now, "row %d of %s is untouched", id, was.user)
		case was.promo == p.dupPromo:
			require.Equal(t, "revoked", now.status, "the duplicate of %s", was.user)
			require.True(t, now.revoked)
			revoked++
		default:
			require.Equal(t, was, now, "the kept row of %s", was.user)
		}
	}
	require.Equal(t, 28, revoked, "rows revoked")

	active := f.activeAtStripe(t)
	require.Len(t, active, 228, "no code was created or lost")
	deactivated := 0
	for _, a := range active {
		if !a {
			deactivated++
		}
	}
	require.Equal(t, 28, deactivated, "codes deactivated at Stripe")
	for user, p := range f.affected {
		require.True(t, active[p.keptPromo], "%s keeps %s", user, p.keptCode)
		require.False(t, active[p.dupPromo], "%s's %s is deactivated", user, p.dupCode)
		require.Equal(t, int64(-creditAmount), f.fake.CustomerBalance("cus_"+user), "one credit for %s", user)
	}
	for user, promo := range f.single {
		require.True(t, active[promo], "%s's code is untouched", user)
		require.Zero(t, f.fake.CustomerBalance("cus_"+user), "no credit for %s", user)
	}
	require.Equal(t, 28, f.fake.Created(stripefake.KindCustomerBalanceTransaction), "credits created at Stripe")
	require.Zero(t, f.fake.RequestsWithoutKey())

	sent := f.mail.sentEmails()
	require.Len(t, sent, 28, "apology emails sent")
	to := map[string]bool{}
	for _, e := range sent {
		user := strings.TrimSuffix(e.To, "@example.test")
		p, ok := f.affected[user]
		require.True(t, ok, "email to %s, who was not affected", e.To)
		require.False(t, to[user], "a second email to %s", user)
		to[user] = true
		require.Contains(t, e.Text, p.keptCode)
		require.Contains(t, e.Text, incident)
	}

	// The ledger record that made a duplicate is revoked with it; the
	// record of a kept code, and the job's others, stay applied.
	ledger, err := pgguard.New(f.pool, nil)
	require.NoError(t, err)
	annivKey := func(user string) string {
		k, err := applyloyalty.Key(applyloyalty.Candidate{UserID: user, SubscriptionID: "sub_" + user, Milestone: applyloyalty.MilestoneMonths})
		require.NoError(t, err)
		return k.String()
	}
	hist, err := ledger.History(f.ctx, annivKey(overlapDup))
	require.NoError(t, err)
	require.Len(t, hist, 1)
	require.Equal(t, idempotency.StateRevoked, hist[0].State, "the overlap duplicate's record")
	for _, user := range []string{ledgerKept, "u001", "u002", "u003"} {
		hist, err := ledger.History(f.ctx, annivKey(user))
		require.NoError(t, err)
		require.Len(t, hist, 1)
		require.Equal(t, idempotency.StateApplied, hist[0].State, "%s's anniversary record", user)
	}
}

// indexBuildsAndHolds builds the guard's index on the live table and runs
// the guard's contract test on it.
func (f *fixture) indexBuildsAndHolds(t *testing.T) {
	t.Helper()
	built, err := pgguard.CreateIndexConcurrently(f.ctx, f.pool, applyloyalty.Guard)
	require.NoError(t, err)
	require.Equal(t, pgguard.IndexResult{Created: true}, built)
	guardtest.Check(t, f.pool, guardtest.Table{
		Guard: applyloyalty.Guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error { // the table is there; only Check's users' subscriptions
			_, err := db.Exec(ctx, `INSERT INTO subscriptions (id, user_id, customer_id, plan, started_at)
				SELECT 'sub_gt' || g, 'gt' || g, 'cus_gt' || g, 'pro', now() FROM generate_series(0, 99) g`)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO loyalty_discounts (user_id, subscription_id, milestone, promotion_code_id, code, status, idempotency_key)
				VALUES ($1, 'sub_' || $1, 12, 'promo_x', 'CODE', $2, 'k')`, []any{key[0], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("gt%d", i)} },
		ExemptStatuses: []string{"revoked"},
	})
}

func TestTheIndexCannotBeBuiltOverTheSeededDuplicates(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.seedIncident(t)
	_, err := pgguard.CreateIndexConcurrently(f.ctx, f.pool, applyloyalty.Guard)
	var dup *pgguard.DuplicatesError
	require.ErrorAs(t, err, &dup)
	require.Len(t, dup.Groups, 28)
	for _, g := range dup.Groups {
		require.Len(t, g.Rows, 2, "user %v", g.Key[0])
	}
}

func TestDryRunListsTheChangesAndTheirCostAndWritesNothing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.seedIncident(t)
	before, seeded := f.rows(t), f.calls()
	var progress bytes.Buffer
	r := f.remediation(t, &Config{Progress: &progress})

	rep, err := r.DryRun(f.ctx, incident)
	require.NoError(t, err)
	t.Logf("dry run:\n%s", rep)

	require.True(t, rep.DryRun)
	require.Len(t, rep.Users, 28)
	require.Equal(t, Step{Planned: 28}, rep.Deactivate)
	require.Equal(t, Step{Planned: 28}, rep.Credit)
	require.Equal(t, Step{Planned: 28}, rep.Apology)
	require.Equal(t, 84, rep.ProviderCalls(), "28 deactivations, 28 credits, 28 emails")
	require.Empty(t, rep.NoAddress)
	require.False(t, rep.Complete())
	for _, u := range rep.Users {
		p := f.affected[u.UserID]
		require.Equal(t, p.keptCode, u.Kept.Code, "%s keeps the oldest", u.UserID)
		require.Len(t, u.Revoke, 1)
		require.Equal(t, p.dupPromo, u.Revoke[0].PromotionCodeID)
		require.Equal(t, "cus_"+u.UserID, u.CustomerID)
	}
	out := rep.String()
	require.Contains(t, out, "keep EIL-ANNIV-Q4R7P")
	require.Contains(t, out, "revoke EIL-ANNIV-X9M2B")
	require.Contains(t, out, "keep HSY-ANNIV-A2X9F")
	require.Contains(t, out, "revoke HSY-ANNIV-B7K3L")
	require.Contains(t, out, "would deactivate   28 promotion codes at Stripe (0 of 28 done already)")
	require.Contains(t, out, "would credit       28 customers 29.00 USD each, 812.00 USD in all (0 of 28 done already)")
	require.Contains(t, out, "would send         28 apology emails (0 of 28 done already)")
	require.Contains(t, out, "cost: 84 provider calls, 812.00 USD in credits")

	// Nothing was sent and nothing kept: not even the plan table.
	require.Equal(t, calls{}, f.calls().since(seeded))
	require.Equal(t, before, f.rows(t))
	var planTable *string
	require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT to_regclass('loyalty_remediations')::text`).Scan(&planTable))
	require.Nil(t, planTable)
	require.Empty(t, progress.String(), "a dry run prints its report only")
}

func TestSweepRemediatesOnceThenTheIndexBuilds(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.seedIncident(t)
	f.migrate(t)
	before, seeded := f.rows(t), f.calls()
	r := f.remediation(t, nil)

	rep, err := r.Run(f.ctx, incident)
	require.NoError(t, err)
	t.Logf("run:\n%s", rep)
	require.True(t, rep.Complete())
	require.Equal(t, calls{deactivate: 28, credit: 28, mail: 28, stripe: 56}, f.calls().since(seeded),
		"one provider call per intent, no lookups")
	require.Equal(t, 84, rep.ProviderCalls())
	for _, s := range []Step{rep.Deactivate, rep.Credit, rep.Apology} {
		require.Equal(t, 28, s.Planned)
		require.Equal(t, 28, s.Done)
		require.Zero(t, s.DoneBefore)
		require.Equal(t, 28, s.Sweep.Outcomes[idempotency.OutcomeApplied])
		require.Empty(t, s.Sweep.Failures)
	}
	f.requireRemediated(t, before)

	// A second run: everything is settled by the pre-flight, nothing sent.
	ran := f.calls()
	rep, err = r.Run(f.ctx, incident)
	require.NoError(t, err)
	require.True(t, rep.Complete())
	require.Zero(t, rep.ProviderCalls())
	require.Equal(t, calls{}, f.calls().since(ran), "the second run makes no provider call")
	require.Equal(t, 28, rep.Deactivate.DoneBefore)
	require.Equal(t, 28, rep.Apology.Sweep.SavedByPreflight)
	f.requireRemediated(t, before)

	dry, err := r.DryRun(f.ctx, incident)
	require.NoError(t, err)
	require.Zero(t, dry.ProviderCalls())
	require.True(t, dry.Complete())
	require.Contains(t, dry.String(), "would credit        0 customers 29.00 USD each, 0.00 USD in all (28 of 28 done already)")

	f.indexBuildsAndHolds(t)
}

// killingStore is the ledger of a process that dies between a provider's
// answer and its record: the after-th completion of namespace never
// reaches the ledger, and the run's context is cancelled (the process is
// gone). The claim stays held under its lease, as a killed process leaves
// it.
type killingStore struct {
	idempotency.Store
	namespace string
	after     int
	kill      func()

	mu sync.Mutex
	n  int
}

var errKilled = errors.New("killed between the provider's answer and the record")

func (s *killingStore) Transition(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	if c.To == idempotency.StateApplied && c.By == idempotency.ByHolder && strings.HasPrefix(c.Key, s.namespace+":") {
		s.mu.Lock()
		s.n++
		n := s.n
		s.mu.Unlock()
		if n == s.after {
			s.kill()
			return idempotency.Record{}, errKilled
		}
	}
	return s.Store.Transition(ctx, c)
}

func TestRunKilledHalfWayThenRerunEndsInTheSameState(t *testing.T) {
	t.Parallel()
	for _, kill := range []struct {
		step      string
		namespace string
		after     int
	}{
		{"deactivate", DeactivateKeys.Namespace, 10},
		{"credit", CreditKeys.Namespace, 5},
		{"apology", ApologyKeys.Namespace, 20},
	} {
		t.Run(kill.step, func(t *testing.T) {
			t.Parallel()
			f := setup(t)
			f.seedIncident(t)
			f.migrate(t)
			before, seeded := f.rows(t), f.calls()

			ctx, cancel := context.WithCancel(f.ctx)
			defer cancel()
			killed := f.remediation(t, &Config{
				Sweep: &sweep.Config{Concurrency: 1}, // one effect at a time: the kill lands after exactly after-1 completions
				wrapStore: func(s idempotency.Store) idempotency.Store {
					return &killingStore{Store: s, namespace: kill.namespace, after: kill.after, kill: cancel}
				},
			})
			rep, err := killed.Run(ctx, incident)
			require.ErrorIs(t, err, context.Canceled)
			t.Logf("killed run:\n%s", rep)
			require.False(t, rep.Complete())
			require.Contains(t, rep.String(), "interrupted")
			step := map[string]*Step{"deactivate": &rep.Deactivate, "credit": &rep.Credit, "apology": &rep.Apology}[kill.step]
			require.Equal(t, kill.after-1, step.Sweep.Outcomes[idempotency.OutcomeApplied], "completions before the kill")
			require.Equal(t, 1, step.Sweep.Outcomes[idempotency.OutcomeError], "the killed completion")

			// At once: the killed claim is live; everything else goes on.
			r := f.remediation(t, nil)
			rep, err = r.Run(f.ctx, incident)
			require.NoError(t, err)
			t.Logf("run again at once:\n%s", rep)
			require.False(t, rep.Complete(), "the killed run's claim holds its intent")
			step = map[string]*Step{"deactivate": &rep.Deactivate, "credit": &rep.Credit, "apology": &rep.Apology}[kill.step]
			require.Equal(t, 1, step.Sweep.Outcomes[idempotency.OutcomeInFlight])
			require.Equal(t, 27, step.Done)
			require.Len(t, slices.DeleteFunc(slices.Clone(rep.Users), func(u User) bool { return u.Done }), 1, "one user unfinished")

			// After the lease: taken over under the same key, and the
			// provider replays what it did.
			f.clock.Advance(10 * time.Minute)
			rep, err = r.Run(f.ctx, incident)
			require.NoError(t, err)
			t.Logf("run again after the lease:\n%s", rep)
			require.True(t, rep.Complete())
			f.requireRemediated(t, before)
			total := f.calls().since(seeded)
			require.Equal(t, 84+1, total.deactivate+total.credit+total.mail,
				"one provider call per intent, and the killed one's again (answered by the provider's replay)")

			ran := f.calls()
			rep, err = r.Run(f.ctx, incident)
			require.NoError(t, err)
			require.True(t, rep.Complete())
			require.Equal(t, calls{}, f.calls().since(ran), "a run after completion makes no provider call")
		})
	}
}

func TestARevokedUserWhoResubscribesEarnsAFreshCode(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.seedIncident(t)
	f.migrate(t)
	rep, err := f.remediation(t, nil).Run(f.ctx, incident)
	require.NoError(t, err)
	require.True(t, rep.Complete())
	f.indexBuildsAndHolds(t)

	// EIL cancels: the kept code (the old job's row, no ledger record) is
	// revoked too.
	require.NoError(t, f.loyalty.Revoke(f.ctx, eil, "subscription cancelled"))
	_, err = f.pool.Exec(f.ctx, `UPDATE subscriptions SET cancelled_at = '2026-01-01' WHERE id = 'sub_' || $1`, eil)
	require.NoError(t, err)

	// She resubscribes and completes 12 months again: a fresh code; the
	// two revoked rows do not block it.
	later := time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	_, err = f.pool.Exec(f.ctx, `INSERT INTO subscriptions (id, user_id, customer_id, plan, started_at) VALUES ('sub_eil_2', $1, $2, 'pro', $3)`,
		eil, "cus_"+eil, later.AddDate(-1, 0, 0))
	require.NoError(t, err)
	created := f.fake.Created(stripefake.KindPromotionCode)
	tick, err := f.loyalty.Tick(f.ctx, later)
	require.NoError(t, err)
	require.Equal(t, 1, tick.Candidates, "only the resubscribed user")
	require.Equal(t, 1, tick.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, created+1, f.fake.Created(stripefake.KindPromotionCode))

	var revoked, applied int
	require.NoError(t, f.pool.QueryRow(f.ctx, `
		SELECT count(*) FILTER (WHERE status = 'revoked'), count(*) FILTER (WHERE status = 'applied' AND subscription_id = 'sub_eil_2')
		FROM loyalty_discounts WHERE user_id = $1`, eil).Scan(&revoked, &applied))
	require.Equal(t, 2, revoked, "the duplicate and the cancelled code")
	require.Equal(t, 1, applied)
}

func TestAnotherIncidentIDNeverPlansADuplicateTwice(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.seedIncident(t)
	f.migrate(t)

	// A run killed after 10 deactivations leaves 18 duplicates active.
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	_, err := f.remediation(t, &Config{
		Sweep: &sweep.Config{Concurrency: 1},
		wrapStore: func(s idempotency.Store) idempotency.Store {
			return &killingStore{Store: s, namespace: DeactivateKeys.Namespace, after: 11, kill: cancel}
		},
	}).Run(ctx, incident)
	require.ErrorIs(t, err, context.Canceled)

	// The operator mistypes the incident id: the audit finds the 18, which
	// belong to the first incident's plan, and nothing is sent.
	r := f.remediation(t, nil)
	ran := f.calls()
	rep, err := r.Run(f.ctx, incident+"-typo")
	require.NoError(t, err)
	t.Logf("mistyped:\n%s", rep)
	require.Equal(t, map[string]int{incident: 18}, rep.OtherIncidents)
	require.Empty(t, rep.Users)
	require.False(t, rep.Complete())
	require.Equal(t, calls{}, f.calls().since(ran))
	require.Contains(t, rep.String(), "left alone: 18 duplicates already planned under incident "+incident)

	// The right id finishes the job; the mistyped one stays empty.
	f.clock.Advance(10 * time.Minute)
	rep, err = r.Run(f.ctx, incident)
	require.NoError(t, err)
	require.True(t, rep.Complete())
	rep, err = r.Run(f.ctx, incident+"-typo")
	require.NoError(t, err)
	require.True(t, rep.Complete())
	require.Empty(t, rep.Users)
	require.Equal(t, 28, f.fake.Created(stripefake.KindCustomerBalanceTransaction))
	require.Len(t, f.mail.sentEmails(), 28)
}

func TestAUserWithoutAnAddressIsUnfinishedUntilOneIsOnFile(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.seedIncident(t)
	f.migrate(t)
	_, err := f.pool.Exec(f.ctx, `UPDATE users SET email = NULL WHERE id = $1`, hsy)
	require.NoError(t, err)
	r := f.remediation(t, nil)

	dry, err := r.DryRun(f.ctx, incident)
	require.NoError(t, err)
	require.Equal(t, []string{hsy}, dry.NoAddress)

	rep, err := r.Run(f.ctx, incident)
	require.NoError(t, err)
	t.Logf("without an address:\n%s", rep)
	require.False(t, rep.Complete())
	require.Equal(t, 27, rep.Apology.Done)
	require.Equal(t, 28, rep.Credit.Done, "the credit does not wait for an address")
	require.Len(t, rep.Apology.Sweep.Failures, 1)
	require.Equal(t, idempotency.OutcomePermanent, rep.Apology.Sweep.Failures[0].Outcome)
	require.Len(t, f.mail.sentEmails(), 27)

	_, err = f.pool.Exec(f.ctx, `UPDATE users SET email = $1 || '@example.test' WHERE id = $1`, hsy)
	require.NoError(t, err)
	ran := f.calls()
	rep, err = r.Run(f.ctx, incident)
	require.NoError(t, err)
	require.True(t, rep.Complete())
	require.Equal(t, calls{mail: 1}, f.calls().since(ran), "only the missing apology")
}

func TestIncidentIDIsRequiredAndTrimmed(t *testing.T) {
	t.Parallel()
	r, err := New(Config{DB: &pgxpool.Pool{}, Stripe: &client.API{}, Mail: Mail{Endpoint: "http://mail.invalid", From: "a@b"},
		Credit: Credit{Amount: 1, Currency: "usd"}, Recipients: func(context.Context, []string) (map[string]string, error) { return nil, nil }})
	require.NoError(t, err)
	for _, id := range []string{"", " INC-1", "INC-1\n", strings.Repeat("x", 65)} {
		_, err := r.Run(context.Background(), id)
		require.ErrorContains(t, err, "incident id", "%q", id)
		_, err = r.DryRun(context.Background(), id)
		require.ErrorContains(t, err, "incident id", "%q", id)
	}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	t.Parallel()
	ok := Config{DB: &pgxpool.Pool{}, Stripe: &client.API{}, Mail: Mail{Endpoint: "http://mail.invalid", From: "a@b"},
		Credit: Credit{Amount: 1, Currency: "usd"}, Recipients: func(context.Context, []string) (map[string]string, error) { return nil, nil }}
	for name, mutate := range map[string]func(*Config){
		"no db":         func(c *Config) { c.DB = nil },
		"no stripe":     func(c *Config) { c.Stripe = nil },
		"no endpoint":   func(c *Config) { c.Mail.Endpoint = "" },
		"no sender":     func(c *Config) { c.Mail.From = "" },
		"no recipients": func(c *Config) { c.Recipients = nil },
		"no amount":     func(c *Config) { c.Credit.Amount = 0 },
		"bad currency":  func(c *Config) { c.Credit.Currency = "dollars" },
	} {
		c := ok
		mutate(&c)
		_, err := New(c)
		require.Error(t, err, name)
	}
}
