package payout

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
)

// The two contract tests every team adds for its own effect and table.

func TestPayoutTransfersGuardContract(t *testing.T) {
	t.Parallel()
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: Guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			if _, err := db.Exec(ctx, Schema); err != nil {
				return err
			}
			_, err := db.Exec(ctx, `INSERT INTO payout_requests (id, recipient, amount_cents, currency)
				SELECT 'po' || g, 'acct' || g, 100, 'USD' FROM generate_series(0, 99) g`)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO payout_transfers (payout_id, status, reference, idempotency_key)
				VALUES ($1, $2, '1051d040-d493-5107-a258-4cc9bdf5ff16', 'k')`, []any{key[0], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("po%d", i)} },
		ExemptStatuses: []string{"failed"},
	})
}

// The provider deduplicates by the UUID, so effecttest's crash case is
// recovered by a takeover under the same UUID: the provider answers with
// the first transfer. Effects counts transfers made, not requests.
func TestTransferEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var inputs []Request
	for i := range 6 {
		inputs = append(inputs, f.request(t, fmt.Sprintf("po_%d", i), fmt.Sprintf("acct_%d", i), int64(1000+i)))
	}
	ok := effecttest.Run(t, effecttest.Case[Request, Transfer]{
		Effect: f.p.Effect(),
		Inputs: inputs,
		// Same payout request, another amount: the money movement changed
		// under one key.
		Mutate: func(r Request) Request { r.AmountCents++; return r },
		NewStore: func(now func() time.Time) idempotency.Store {
			s, err := pgguard.New(f.pool, &pgguard.Config{Now: now})
			require.NoError(t, err)
			return s
		},
		Effects: f.prov.Effects, // transfers made, not requests
		Clock:   f.clock,        // the provider's window reads it too
		Config:  &idempotency.Config{Sleep: f.clock.Sleep},
	})
	require.True(t, ok)
	require.Equal(t, len(inputs), f.prov.Effects(), "one transfer per payout request")
	require.Len(t, f.rows(t), len(inputs), "one payout_transfers row per payout request")
}
