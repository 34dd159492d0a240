package affpostback

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

func TestPostbacksGuardContract(t *testing.T) {
	t.Parallel()
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: Guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			if _, err := db.Exec(ctx, Schema); err != nil {
				return err
			}
			_, err := db.Exec(ctx, `INSERT INTO conversions (id, click_id, payout_cents, converted_at)
				SELECT 'cv' || g, 'clk' || g, 100, now() FROM generate_series(0, 99) g`)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO postbacks (conversion_id, status, http_status, idempotency_key) VALUES ($1, $2, 200, 'k')`,
				[]any{key[0], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("cv%d", i)} },
		ExemptStatuses: []string{"failed"},
	})
}

// The network ignores keys, and the effect takes over only claims whose
// call never started (ExpiredRetryUncalled): effecttest's crash case, a
// worker that died after the call, must therefore end in doubt for an
// operator (Program.Settle, from the network's report) with no second
// hit. The case says so (ParkForOperator), and effecttest checks it.
func TestPostbackEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var inputs []Conversion
	for i := range 6 {
		inputs = append(inputs, f.convert(t, fmt.Sprintf("cv%d", i), int64(1000+i)))
	}
	ok := effecttest.Run(t, effecttest.Case[Conversion, httpeffect.Response]{
		Effect: f.p.Effect(),
		Inputs: inputs,
		// Same conversion, another payout: the payload changed under one key.
		Mutate: func(c Conversion) Conversion { c.PayoutCents++; return c },
		NewStore: func(now func() time.Time) idempotency.Store {
			s, err := pgguard.New(f.pool, &pgguard.Config{Now: now})
			require.NoError(t, err)
			return s
		},
		Effects:       f.net.Effects, // every hit it accepts is a conversion
		CrashRecovery: effecttest.ParkForOperator,
	})
	require.True(t, ok)
	require.Equal(t, len(inputs), f.net.Requests(), "one hit per conversion")
	require.Len(t, f.postbacks(t), len(inputs)-1, "every conversion but the parked one has its row")
}
