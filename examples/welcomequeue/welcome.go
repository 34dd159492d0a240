package welcomequeue

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/pgguard"
)

// Schema is the example's migration: welcome_emails and its partial unique
// index.
//
//go:embed schema.sql
var Schema string

// Guard describes welcome_emails' partial unique index: one sent email per
// user; revoked rows are exempt.
var Guard = pgguard.Guard{
	Table:          "welcome_emails",
	Columns:        []string{"user_id"},
	StatusColumn:   "status",
	ActiveStatuses: []string{"sent"},
	IndexName:      "uq_welcome_emails_active",
}

// Migrate creates the example's table and the effect ledger. Both are safe
// to run at every start-up.
func Migrate(ctx context.Context, db pgguard.DBTX) error {
	if _, err := db.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("welcomequeue: migrate: %w", err)
	}
	return pgguard.Migrate(ctx, db, nil)
}

// Keys is the key space of the welcome email. Version 1 keys are the user
// alone: one welcome per user, ever.
var Keys = idempotency.KeySpace{Namespace: "mail.welcome", Version: 1}

// Signup is the body of a message: a user who just signed up.
type Signup struct {
	UserID string `json:"user_id"`
	Email  string `json:"email"`
}

// Key is the signup's idempotency key: the user only. Never the message's
// id (a producer that publishes the same signup twice makes two messages)
// and never the clock.
func Key(s Signup) (idempotency.Key, error) {
	return Keys.Key(idempotency.Str("user", s.UserID))
}

// Email is what the mail API is asked to send, as JSON.
type Email struct {
	To       string `json:"to"`
	Template string `json:"template"`
}

// Lease is how long a worker holds a signup's claim: well above the
// client's 10 s timeout times httpeffect's 3 in-run attempts and their
// backoff.
const Lease = time.Minute

// NewEffect returns the welcome-email effect: one POST of an Email to
// endpoint per user, through httpeffect with its defaults for a mail API
// that deduplicates by the Idempotency-Key header for 24 hours
// (ExpiredRetry, DedupWindow 24 h, a fingerprint of the request, three
// attempts in-run). The welcome_emails row is written in the transaction
// that records the email sent. client nil means httpeffect's default.
func NewEffect(endpoint string, client *http.Client) *idempotency.Effect[Signup, httpeffect.Response] {
	eff := httpeffect.Effect(Keys.Namespace, Key,
		func(ctx context.Context, s Signup) (*http.Request, error) {
			body, err := json.Marshal(Email{To: s.Email, Template: "welcome"})
			if err != nil {
				return nil, err
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
			if err != nil {
				return nil, err
			}
			req.Header.Set("Content-Type", "application/json")
			return req, nil
		},
		&httpeffect.Config{Client: client})
	eff.Lease = Lease
	eff.OnComplete = pgguard.OnComplete(record)
	return eff
}

// record writes the welcome_emails row in the ledger's transaction. A
// unique violation on the guard's index means the row is already there.
func record(ctx context.Context, tx pgx.Tx, s Signup, resp httpeffect.Response) error {
	var answer struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(resp.Body, &answer) // the id is kept when the API gives one
	var id *string
	if answer.ID != "" {
		id = &answer.ID
	}
	_, err := pgguard.InsertOnce(ctx, tx, Guard,
		`INSERT INTO welcome_emails (user_id, email, status, message_id) VALUES ($1, $2, 'sent', $3)`,
		s.UserID, s.Email, id)
	return err
}
