package checkoutwebhook

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
)

// The two contract tests every team adds for its own effect and table.

func TestProvisioningsGuardContract(t *testing.T) {
	t.Parallel()
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: Guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			if _, err := db.Exec(ctx, Schema); err != nil {
				return err
			}
			_, err := db.Exec(ctx, `INSERT INTO stripe_events (event_id, type, stripe_created_at, received_at)
				VALUES ('evt_guard', 'checkout.session.completed', now(), now())`)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO provisionings (checkout_session_id, status, account_id, plan, seats, event_id, idempotency_key)
				VALUES ($1, $2, 'acct', 'pro', 1, 'evt_guard', 'k')`, []any{key[0], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("cs_%d", i)} },
		ExemptStatuses: []string{"failed", "revoked"},
	})
}

// The license service deduplicates by Idempotency-Key, so the crash case
// is recovered by a takeover under the same key and the service's replay.
// Effects counts licenses granted, not requests.
func TestProvisioningEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var inputs []Provisioning
	for i := range 6 {
		ev := fmt.Sprintf("evt_c%d", i)
		_, err := f.pool.Exec(f.ctx, `INSERT INTO stripe_events (event_id, type, checkout_session_id, paid, stripe_created_at, received_at)
			VALUES ($1, 'checkout.session.completed', $2, true, now(), now())`, ev, fmt.Sprintf("cs_%d", i))
		require.NoError(t, err)
		inputs = append(inputs, Provisioning{SessionID: fmt.Sprintf("cs_%d", i), AccountID: fmt.Sprintf("acct_%d", i),
			Plan: "pro", Seats: int64(1 + i), EventID: ev})
	}
	ok := effecttest.Run(t, effecttest.Case[Provisioning, httpeffect.Response]{
		Effect: f.p.Effect(),
		Inputs: inputs,
		// Same session, another seat count: the grant changed under one key.
		Mutate: func(p Provisioning) Provisioning { p.Seats++; return p },
		NewStore: func(now func() time.Time) idempotency.Store {
			s, err := pgguard.New(f.pool, &pgguard.Config{Now: now})
			require.NoError(t, err)
			return s
		},
		Effects: f.lic.Effects, // licenses granted, not requests
		Clock:   f.clock,       // the license service's window reads it too
		Config:  &idempotency.Config{Sleep: f.clock.Sleep},
	})
	require.True(t, ok)
	require.Equal(t, len(inputs), f.lic.Effects(), "one license per checkout session")
	require.Len(t, f.provisionings(t), len(inputs), "one provisionings row per checkout session")
}
