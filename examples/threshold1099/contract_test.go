package threshold1099

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

func TestThresholdNoticesGuardContract(t *testing.T) {
	t.Parallel()
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: Guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			if _, err := db.Exec(ctx, Schema); err != nil {
				return err
			}
			_, err := db.Exec(ctx, `INSERT INTO payees (id, name, email)
				SELECT 'p' || g, 'Payee ' || g, 'p' || g || '@example.com' FROM generate_series(0, 99) g`)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO threshold_notices (payee_id, tax_year, status, year_total_cents, idempotency_key)
				VALUES ($1, $2, $3, 60000, 'k')`, []any{key[0], key[1], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("p%d", i), int32(2025)} },
		ExemptStatuses: []string{"failed", "revoked"},
	})
}

func TestThresholdNoticeEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var inputs []Candidate
	for i := range 6 {
		id := fmt.Sprintf("p%d", i)
		f.payee(t, id, id+"@example.com")
		inputs = append(inputs, Candidate{PayeeID: id, TaxYear: 2025, Name: "Payee " + id, Email: id + "@example.com", YearTotalCents: 60000})
	}
	ok := effecttest.Run(t, effecttest.Case[Candidate, httpeffect.Response]{
		Effect: f.p.Effect(),
		Inputs: inputs,
		// Same payee and year, another recipient: the message changed
		// under one key.
		Mutate: func(c Candidate) Candidate { c.Email = "other+" + c.Email; return c },
		NewStore: func(now func() time.Time) idempotency.Store {
			s, err := pgguard.New(f.pool, &pgguard.Config{Now: now})
			require.NoError(t, err)
			return s
		},
		Effects: f.mail.Effects, // emails sent, not requests
	})
	require.True(t, ok)
	require.Equal(t, len(inputs), f.mail.Effects(), "one email per payee-year")
	require.Len(t, f.notices(t), len(inputs), "one threshold_notices row per payee-year")
}
