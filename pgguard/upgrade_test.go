package pgguard_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// v1Row is a ledger row as version 1 wrote it.
type v1Row struct {
	key, status            string
	parked, callStarted    bool
	leaseIn                *time.Duration // nil: NULL
	result                 []byte
	reason                 string
	firstClaimedAgo        time.Duration
	wantState              idempotency.State
	wantLeaseKept, exempts bool
}

func dur(d time.Duration) *time.Duration { return &d }

// TestUpgradeFromVersion1KeepsEveryRowsMeaning: a ledger created by the
// version-1 migration, with rows in every status, is upgraded in place by
// Migrate; every row keeps its key, token, result, reason and times, gets
// the state that means what its flags meant, and the claim rule treats it as
// version 1 did (or more carefully, never less).
func TestUpgradeFromVersion1KeepsEveryRowsMeaning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	_, err := pool.Exec(ctx, readMigration(t, "001_effect_ledger.up.sql"))
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE TABLE effect_ledger_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO effect_ledger_migrations (version, name) VALUES (1, '001_effect_ledger')`)
	require.NoError(t, err)

	clock := clocktest.New()
	now := clock.Now()
	rows := []v1Row{
		{key: "leased", status: "pending", leaseIn: dur(time.Minute), firstClaimedAgo: time.Minute, wantState: idempotency.StateCalling, wantLeaseKept: true},
		{key: "leased-called", status: "pending", callStarted: true, leaseIn: dur(time.Minute), firstClaimedAgo: time.Minute, wantState: idempotency.StateCalling, wantLeaseKept: true},
		{key: "released", status: "pending", reason: "503", firstClaimedAgo: time.Hour, wantState: idempotency.StateUnknown},
		{key: "released-old", status: "pending", reason: "response lost", firstClaimedAgo: 25 * time.Hour, wantState: idempotency.StateUnknown},
		{key: "parked", status: "pending", parked: true, callStarted: true, reason: "replayed 500", firstClaimedAgo: time.Hour, wantState: idempotency.StateInDoubt},
		{key: "applied", status: "applied", result: []byte(`{"id":"promo_1"}`), firstClaimedAgo: 48 * time.Hour, wantState: idempotency.StateApplied},
		{key: "skipped", status: "skipped", result: []byte(`null`), firstClaimedAgo: 48 * time.Hour, wantState: idempotency.StateSkipped},
		{key: "failed", status: "failed", reason: "card_declined", firstClaimedAgo: 48 * time.Hour, wantState: idempotency.StateFailed, exempts: true},
		{key: "revoked", status: "revoked", result: []byte(`{"id":"promo_0"}`), reason: "cancelled", firstClaimedAgo: 72 * time.Hour, wantState: idempotency.StateRevoked, exempts: true},
	}
	for i, r := range rows {
		var lease *time.Time
		if r.leaseIn != nil {
			l := now.Add(*r.leaseIn)
			lease = &l
		}
		var reason *string
		if r.reason != "" {
			reason = &r.reason
		}
		_, err := pool.Exec(ctx, `INSERT INTO effect_ledger (key, namespace, status, fingerprint, result, token, attempts,
				lease_until, parked, call_started, reason, first_claimed_at, updated_at)
			VALUES ($1, 'v1', $2, 'fp', $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
			r.key, r.status, r.result, int64(100+i), 1+i%3, lease, r.parked, r.callStarted, reason, now.Add(-r.firstClaimedAgo), now.Add(-time.Second))
		require.NoError(t, err)
	}

	cfg := &pgguard.Config{Now: clock.Now}
	require.NoError(t, pgguard.Migrate(ctx, pool, cfg))
	s, err := pgguard.New(pool, cfg)
	require.NoError(t, err)
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM effect_ledger").Scan(&n))
	require.Equal(t, len(rows), n, "no row lost")

	for i, r := range rows {
		h, err := s.History(ctx, r.key)
		require.NoError(t, err)
		require.Len(t, h, 1, r.key)
		got := h[0]
		require.Equal(t, r.wantState, got.State, r.key)
		require.Equal(t, int64(100+i), got.Token, r.key)
		require.Equal(t, 1+i%3, got.Claims, "%s: attempts became claims", r.key)
		require.Equal(t, 1, got.Generation, r.key)
		require.Equal(t, r.result, got.Result, r.key)
		require.Equal(t, r.reason, got.Reason, r.key)
		require.Equal(t, "fp", string(got.Fingerprint), r.key)
		require.True(t, got.FirstClaimedAt.Equal(now.Add(-r.firstClaimedAgo)), r.key)
		require.True(t, got.DedupUntil.IsZero() && got.DueAt.IsZero() && len(got.Evidence) == 0, r.key)
		require.Equal(t, r.wantLeaseKept, !got.LeaseUntil.IsZero(), r.key)
	}

	// The claim rule on the upgraded rows, with Stripe's policy (takeover
	// inside a 24 h window) and a live clock.
	stripe := func(key string) idempotency.ClaimRequest {
		return idempotency.ClaimRequest{Key: key, Namespace: "v1", Fingerprint: []byte("fp"), Lease: time.Minute,
			Window: 24 * time.Hour, TakeOver: true}
	}
	verdict := func(key string) idempotency.Verdict {
		c, err := s.Claim(ctx, stripe(key))
		require.NoError(t, err)
		return c.Verdict
	}
	require.Equal(t, idempotency.VerdictInFlight, verdict("leased"), "a live lease is still in flight")
	require.Equal(t, idempotency.VerdictInFlight, verdict("leased-called"))
	require.Equal(t, idempotency.VerdictAcquired, verdict("released"), "a released claim inside the window is retried under its key")
	require.Equal(t, idempotency.VerdictInDoubt, verdict("released-old"), "past the window (first claim + window, as in version 1) it is not")
	require.Equal(t, idempotency.VerdictInDoubt, verdict("parked"), "a parked record waits for reconciliation")
	require.Equal(t, idempotency.VerdictDone, verdict("applied"))
	require.Equal(t, idempotency.VerdictDone, verdict("skipped"))
	require.Equal(t, idempotency.VerdictAcquired, verdict("failed"), "failed records do not block the key")
	require.Equal(t, idempotency.VerdictAcquired, verdict("revoked"))
	clock.Advance(2 * time.Minute)
	require.Equal(t, idempotency.VerdictAcquired, verdict("leased"), "an expired version-1 lease is taken over inside the window")

	// The down migration takes the ledger back to version 1.
	_, err = pool.Exec(ctx, readMigration(t, "002_record_states.down.sql"))
	require.NoError(t, err)
	var parked, pending int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE parked), count(*) FILTER (WHERE status = 'pending') FROM effect_ledger`).Scan(&parked, &pending))
	require.Equal(t, 1, parked, "the parked record is parked again, the released ones released")
	require.Equal(t, 5+2, pending, "the five pending records, and the claims just made over the failed and revoked ones")
}
