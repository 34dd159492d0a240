package magiclink

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

func TestLoginEmailsGuardContract(t *testing.T) {
	t.Parallel()
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard: Guard,
		Migrate: func(ctx context.Context, db pgguard.DBTX) error {
			if _, err := db.Exec(ctx, Schema); err != nil {
				return err
			}
			_, err := db.Exec(ctx, `INSERT INTO login_requests (id, email, token, created_at, expires_at)
				SELECT 'login-request-' || lpad(g::text, 4, '0'), 'u' || g || '@example.com', 'token' || g, now(), now() + interval '15 minutes'
				FROM generate_series(0, 99) g`)
			return err
		},
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO login_emails (login_request_id, status, idempotency_key) VALUES ($1, $2, 'k')`, []any{key[0], status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("login-request-%04d", i)} },
		ExemptStatuses: []string{"failed"},
	})
}

// The provider deduplicates by Idempotency-Key, so the crash case is
// recovered by a takeover under the same key and the provider's replay.
// Effects counts emails really sent, not requests: the replay hits the
// provider again and sends nothing.
func TestMagicLinkEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var inputs []LoginRequest
	for i := range 6 {
		r, err := f.p.Start(f.ctx, NewRequestID(), fmt.Sprintf("u%d@example.com", i))
		require.NoError(t, err)
		inputs = append(inputs, r)
	}
	ok := effecttest.Run(t, effecttest.Case[LoginRequest, httpeffect.Response]{
		Effect: f.p.Effect(),
		Inputs: inputs,
		// Same login request, another recipient: the email changed under
		// one key.
		Mutate: func(r LoginRequest) LoginRequest { r.Email = "other+" + r.Email; return r },
		NewStore: func(now func() time.Time) idempotency.Store {
			s, err := pgguard.New(f.pool, &pgguard.Config{Now: now})
			require.NoError(t, err)
			return s
		},
		Effects: f.mail.Effects, // emails sent, not requests
		Clock:   f.clock,        // the provider's window reads it too
		Config:  &idempotency.Config{Sleep: f.clock.Sleep},
	})
	require.True(t, ok)
	require.Equal(t, len(inputs), f.mail.Effects(), "one email per login request")
	require.Len(t, f.emailRows(t), len(inputs), "one login_emails row per login request")
	for i, e := range f.mail.sentEmails() {
		require.Equal(t, inputs[indexOf(inputs, e.Key)].Token, tokenIn(t, e.Message), "email %d carries its stored token", i)
	}
}

func indexOf(inputs []LoginRequest, key string) int {
	for i, r := range inputs {
		if k, _ := Key(r); k.String() == key {
			return i
		}
	}
	return -1
}
