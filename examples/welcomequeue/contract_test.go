package welcomequeue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/examples/welcomequeue"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgguard/guardtest"
	"github.com/effectonce/effectonce/pgtest"
)

// The two contract tests every team adds for its own effect and table.

func TestWelcomeEmailContract(t *testing.T) {
	mail := httpfake.New(&httpfake.Config{Respond: mailAPIRespond}) // deduplicates by Idempotency-Key, as the real mail API does
	defer mail.Close()
	pool := pgtest.Pool(t)
	require.NoError(t, welcomequeue.Migrate(context.Background(), pool))
	inputs := []welcomequeue.Signup{{UserID: "u1", Email: "a@example.com"}, {UserID: "u2", Email: "b@example.com"},
		{UserID: "u3", Email: "c@example.com"}, {UserID: "u4", Email: "d@example.com"}}
	ok := effecttest.Run(t, effecttest.Case[welcomequeue.Signup, httpeffect.Response]{
		Effect: welcomequeue.NewEffect(mail.URL(), nil),
		Inputs: inputs,
		Mutate: func(s welcomequeue.Signup) welcomequeue.Signup { s.Email = "other+" + s.Email; return s },
		NewStore: func(now func() time.Time) idempotency.Store {
			ledger, err := pgguard.New(pool, &pgguard.Config{Now: now})
			require.NoError(t, err)
			return ledger
		},
		Effects: mail.Effects, // distinct effects: the crash case's takeover is replayed, not sent again
	})
	require.True(t, ok)
	require.Equal(t, len(inputs), mail.Effects())
	var rows int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM welcome_emails WHERE status = 'sent'`).Scan(&rows))
	require.Equal(t, len(inputs), rows, "one welcome_emails row per user, written with the record")
}

func TestWelcomeEmailsGuardContract(t *testing.T) {
	guardtest.Check(t, pgtest.Pool(t), guardtest.Table{
		Guard:   welcomequeue.Guard,
		Migrate: welcomequeue.Migrate,
		Row: func(key []any, status string) (string, []any) {
			return `INSERT INTO welcome_emails (user_id, email, status) VALUES ($1, $2, $3)`,
				[]any{key[0], "someone@example.com", status}
		},
		Key:            func(i int) []any { return []any{fmt.Sprintf("user_%d", i)} },
		ExemptStatuses: []string{"revoked"},
	})
}
