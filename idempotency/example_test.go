package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

func ExampleKeySpace_Key() {
	promo := idempotency.KeySpace{Namespace: "loyalty.promo", Version: 1}

	// Business identity only: the user, the subscription (so a new
	// subscription earns a new code) and the milestone. Never the clock.
	key, err := promo.Key(
		idempotency.Str("user", "u_42"),
		idempotency.Str("sub", "sub_9"),
		idempotency.Int("milestone", 12),
	)
	fmt.Println(key, err)

	_, err = promo.Key(idempotency.Str("user", ""))
	fmt.Println(errors.Is(err, idempotency.ErrEmptyPart))
	// Output:
	// loyalty.promo:v1:user=u_42/sub=sub_9/milestone#12 <nil>
	// true
}

func ExampleKeySpace_Key_hmac() {
	// With a secret, the provider sees a MAC instead of raw ids.
	promo := idempotency.KeySpace{Namespace: "loyalty.promo", Secret: []byte("from-your-secret-store")}
	key := promo.MustKey(idempotency.Str("email", "alice@example.com"))
	fmt.Println(len(key.String()), key.HMAC(), key.LogValue())
	// Output: 83 true loyalty.promo:<hmac>
}

func ExampleRun() {
	ctx := context.Background()
	exec, _ := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)

	keys := idempotency.KeySpace{Namespace: "mail.welcome"}
	sent := 0
	welcome := &idempotency.Effect[string, string]{
		Name: "mail.welcome",
		Key: func(userID string) (idempotency.Key, error) {
			return keys.Key(idempotency.Str("user", userID))
		},
		Call: func(ctx context.Context, key idempotency.Key, userID string) (string, error) {
			// Send key.String() as the provider's Idempotency-Key.
			sent++
			return "msg_" + userID, nil
		},
	}

	// The trigger delivers the same intent three times.
	for range 3 {
		res, err := idempotency.Run(ctx, exec, welcome, "u_42")
		fmt.Println(res.Outcome, res.Value, err)
	}
	fmt.Println("emails sent:", sent)
	// Output:
	// applied msg_u_42 <nil>
	// already_applied msg_u_42 <nil>
	// already_applied msg_u_42 <nil>
	// emails sent: 1
}

func ExampleRun_mismatch() {
	ctx := context.Background()
	exec, _ := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
	type refund struct {
		Request string
		Amount  int64
	}
	keys := idempotency.KeySpace{Namespace: "orders.refund"}
	eff := &idempotency.Effect[refund, int64]{
		Name:        "orders.refund",
		Key:         func(r refund) (idempotency.Key, error) { return keys.Key(idempotency.Str("request", r.Request)) },
		Fingerprint: func(r refund) ([]byte, error) { return idempotency.FingerprintJSON(r.Amount) },
		Call:        func(ctx context.Context, k idempotency.Key, r refund) (int64, error) { return r.Amount, nil },
	}
	_, _ = idempotency.Run(ctx, exec, eff, refund{"rr_1", 500})
	_, err := idempotency.Run(ctx, exec, eff, refund{"rr_1", 900})

	var mismatch *idempotency.MismatchError
	if errors.As(err, &mismatch) {
		fmt.Println("refused; stored:", mismatch.Stored.State, string(mismatch.Stored.Result))
	}
	// Output: refused; stored: applied 500
}

func ExampleResult_Disposition() {
	ctx := context.Background()
	exec, _ := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
	keys := idempotency.KeySpace{Namespace: "mail.welcome"}
	welcome := &idempotency.Effect[string, string]{
		Name: "mail.welcome",
		Key:  func(userID string) (idempotency.Key, error) { return keys.Key(idempotency.Str("user", userID)) },
		Call: func(ctx context.Context, key idempotency.Key, userID string) (string, error) {
			return "", idempotency.NotActed(errors.New("429 Too Many Requests"), 30*time.Second)
		},
	}
	// A queue consumer: ack, retry later, or dead-letter, from the outcome
	// alone (never from err == nil: in flight elsewhere has a nil error
	// and must be redelivered).
	res, _ := idempotency.Run(ctx, exec, welcome, "u_42")
	d := res.Disposition()
	fmt.Println(res.Outcome, d.Action, d.Delay)
	// Output: retryable retry 30s
}

func ExampleKey_UUID() {
	// For providers that take the idempotency key only as a UUID.
	payouts := idempotency.KeySpace{Namespace: "payouts.transfer"}
	key := payouts.MustKey(idempotency.Str("payout", "po_123"))
	fmt.Println(key.UUID())
	fmt.Println(key.UUID() == payouts.MustKey(idempotency.Str("payout", "po_123")).UUID())
	// Output:
	// 1051d040-d493-5107-a258-4cc9bdf5ff16
	// true
}
