// Package business builds keys from business data only, with the clock
// used nearby for other purposes: nothing here is reported.
package business

import (
	"context"
	"database/sql"
	"math/rand"
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/effectonce/effectonce/idempotency"
)

var keys = idempotency.KeySpace{Namespace: "tax.notice1099", Version: 1}

type Payout struct {
	PayeeID string
	PaidAt  time.Time
}

// The tax year comes from the payout date: right.
func noticeKey(p Payout, tz *time.Location) (idempotency.Key, error) { // want noticeKey:"param 0 f0 to sink.*param 1 to sink"
	return keys.Key(idempotency.Str("payee", p.PayeeID), idempotency.Int("year", int64(p.PaidAt.In(tz).Year())))
}

type Candidate struct {
	UserID, SubscriptionID string
}

// The library's own example: user, subscription, milestone.
func promoKey(c Candidate) idempotency.Key { // want promoKey:"param 0 f0 to sink"
	return keys.MustKey(idempotency.Str("user", c.UserID), idempotency.Str("sub", c.SubscriptionID), idempotency.Int("milestone", 12))
}

type job struct {
	UserID  string
	Created time.Time
}

func newJob(user string) job { // want newJob:`^result f1 from the clock: time.Now; param 0 to result f0$`
	return job{UserID: user, Created: time.Now()}
}

// A struct holding the clock in another field: only that field is tainted.
func jobKey(user string) idempotency.Key { // want jobKey:"param 0 to sink"
	j := job{UserID: user, Created: time.Now()}
	lease := j.Created.Add(time.Minute)
	_ = lease
	k := keys.MustKey(idempotency.Str("user", j.UserID))
	j2 := newJob(user)
	_ = keys.MustKey(idempotency.Str("user", j2.UserID))
	return k
}

// A time read back from the database is business data.
func fromDB(ctx context.Context, db *sql.DB, id string) (idempotency.Key, error) { // want fromDB:`^param 2 to result r0; param 2 to sink: idempotency.Str\("payout"\)$`
	var paidAt time.Time
	if err := db.QueryRowContext(ctx, "SELECT paid_at FROM payouts WHERE id = $1 AND paid_at < $2", id, time.Now()).Scan(&paidAt); err != nil {
		return idempotency.Key{}, err
	}
	return keys.Key(idempotency.Str("payout", id), idempotency.Int("year", int64(paidAt.Year())))
}

// The clock decides whether to act and when to give up; not the key.
func due(p Payout, req *http.Request) bool { // want due:"param 0 f0 to sink"
	deadline := time.Now().Add(30 * time.Second)
	_ = deadline
	req.Header.Set("Idempotency-Key", "notice-"+p.PayeeID)
	req.Header.Set("X-Request-Id", uuid.NewString())
	return time.Since(p.PaidAt) > 24*time.Hour
}

// A generator seeded from business data is deterministic.
func shard(user int64) idempotency.Part { // want shard:"param 0 to result; param 0 to sink"
	return idempotency.Int("shard", int64(rand.New(rand.NewSource(user)).Intn(16)))
}

// Not a key builder: a retry delay may come from the clock.
func retryLater(err error, at time.Time) error { // want retryLater:`^param 0 to result$`
	return idempotency.Retryable(err, int64(time.Until(at)))
}

// A run whose retry delay has jitter: the jitter sits in another field than
// the one the key is built from, and is not reported.
type run struct {
	user  string
	delay time.Duration
}

func (r *run) key() idempotency.Key { // want key:`^param 0 f0 to result; param 0 f0 to sink: idempotency.Str\("user"\)$`
	return keys.MustKey(idempotency.Str("user", r.user))
}

type outcome struct {
	Key   idempotency.Key
	Delay time.Duration
}

func (r *run) outcome() outcome { // want outcome:`^param 0 f0 to result f0; param 0 f0 to sink`
	return outcome{Key: r.key(), Delay: r.delay}
}

func (r *run) retry(req *http.Request) { // want retry:`^param 0 f0 to sink: run.key\(\) → idempotency.Str\("user"\)$`
	r.delay = time.Duration(rand.Int63n(int64(time.Second)))
	k := r.key()
	req.Header.Set("Idempotency-Key", k.String())
	o := r.outcome()
	req.Header.Set("Idempotency-Key", o.Key.String())
}
