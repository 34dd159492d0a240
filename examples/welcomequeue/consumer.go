package welcomequeue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
)

// Message is what the broker delivers. Its body is a Signup as JSON.
type Message struct {
	// ID is the broker's id of the message; a redelivery keeps it. It is
	// logged, never put in the key: the same signup published twice is two
	// messages and one intent.
	ID   string
	Body []byte
}

// Delivery is one delivery of a message, with the broker's three ways to
// settle it. The consumer calls exactly one of them per delivery. Adapt
// your broker's client to it: SQS (DeleteMessage; ChangeMessageVisibility;
// a redrive policy or a send to the dead-letter queue), RabbitMQ (Ack;
// Nack into a delay queue; Nack without requeue to a dead-letter
// exchange), a PostgreSQL job table (delete; run_at = now() + delay; a
// failed status).
type Delivery interface {
	Message() Message
	// Ack removes the message: the intent is done.
	Ack(ctx context.Context) error
	// Nack asks for a redelivery after delay; zero means the broker's own
	// backoff.
	Nack(ctx context.Context, delay time.Duration) error
	// DeadLetter moves the message where a person will see it, with the
	// reason.
	DeadLetter(ctx context.Context, reason string) error
}

// Consumer sends one welcome email per user, whatever the broker
// redelivers: each delivery is one idempotency.Run, and the run's
// Disposition alone decides how the delivery is settled.
type Consumer struct {
	// Exec runs the effect; its store is pgguard's ledger. Required.
	Exec *idempotency.Executor
	// Effect is the welcome email (NewEffect). Required.
	Effect *idempotency.Effect[Signup, httpeffect.Response]
	// Workers is the number of deliveries handled at once. Zero means 4.
	Workers int
	// Logger receives settlement failures (the broker redelivers those
	// messages). Nil means slog.Default().
	Logger *slog.Logger
}

// Handle runs the effect for one delivery and settles it by the run's
// disposition:
//
//   - Ack: applied, already applied, skipped or reconciled.
//   - Nack with the run's delay: another worker holds the claim (in
//     flight: it may still fail, and then only this redelivery makes the
//     email happen, so it is never acked), the record is not due yet, the
//     provider refused before acting, or the store failed.
//   - DeadLetter: the provider refused for good, the user's key was used
//     with another payload (a mismatch), the record is in doubt, or the
//     message cannot be a signup. The ledger keeps the details.
//
// The decision never looks at err == nil: a run in flight elsewhere
// returns a nil error and must be redelivered. The delivery is settled
// with ctx's values but not its cancellation, so a consumer shutting down
// still settles what it ran. Handle returns the settlement's error.
func (c *Consumer) Handle(ctx context.Context, d Delivery) error {
	settle := context.WithoutCancel(ctx)
	var s Signup
	if err := json.Unmarshal(d.Message().Body, &s); err != nil {
		return d.DeadLetter(settle, fmt.Sprintf("not a signup: %v", err))
	}
	res, err := idempotency.Run(ctx, c.Exec, c.Effect, s)
	switch disp := res.Disposition(); disp.Action {
	case idempotency.Ack:
		return d.Ack(settle)
	case idempotency.Retry:
		return d.Nack(settle, disp.Delay)
	default: // idempotency.DeadLetter
		return d.DeadLetter(settle, fmt.Sprintf("%v: %v", res.Outcome, err))
	}
}

// Run handles deliveries with Workers goroutines until the channel is
// closed (it then returns nil once every delivery taken is settled) or ctx
// is done (it returns ctx's error once the deliveries under way are
// settled).
func (c *Consumer) Run(ctx context.Context, deliveries <-chan Delivery) error {
	if c.Exec == nil || c.Effect == nil {
		return errors.New("welcomequeue: Consumer needs Exec and Effect")
	}
	workers := c.Workers
	if workers <= 0 {
		workers = 4
	}
	logger := c.Logger
	if logger == nil {
		logger = slog.Default()
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case d, ok := <-deliveries:
					if !ok {
						return
					}
					if err := c.Handle(ctx, d); err != nil {
						logger.WarnContext(ctx, "welcomequeue: settling a delivery failed; the broker will redeliver it",
							slog.String("message", d.Message().ID), slog.String("error", err.Error()))
					}
				}
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}
