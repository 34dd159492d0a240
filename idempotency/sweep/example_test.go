package sweep_test

import (
	"context"
	"fmt"
	"sync/atomic"

	"golang.org/x/time/rate"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

func ExampleRun() {
	ctx := context.Background()
	exec, _ := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)

	type subscriber struct{ User, Sub string }
	keys := idempotency.KeySpace{Namespace: "loyalty.promo"}
	var created atomic.Int64
	anniversary := &idempotency.Effect[subscriber, string]{
		Name: "loyalty.promo",
		Key: func(s subscriber) (idempotency.Key, error) {
			return keys.Key(idempotency.Str("user", s.User), idempotency.Str("sub", s.Sub), idempotency.Int("milestone", 12))
		},
		Call: func(ctx context.Context, key idempotency.Key, s subscriber) (string, error) {
			// Create the promotion code with key.String() as Idempotency-Key.
			return fmt.Sprintf("promo_%d", created.Add(1)), nil
		},
	}
	cfg := &sweep.Config{
		BatchSize: 500,
		// Stripe allows about 100 calls per second in live mode: stay well
		// below it, the rest of the service needs some too.
		Limiter: rate.NewLimiter(20, 5),
	}

	// The 30-minute tick before this one handled two subscribers.
	earlier := []subscriber{{"u_1", "sub_1"}, {"u_2", "sub_2"}}
	_, _ = sweep.Run(ctx, exec, anniversary, sweep.Slice(earlier), cfg)

	// This tick sees them again, three new ones, and a row with no
	// subscription id.
	due := []subscriber{{"u_1", "sub_1"}, {"u_2", "sub_2"}, {"u_3", "sub_3"}, {"u_4", "sub_4"}, {"u_5", "sub_5"}, {"u_6", ""}}
	rep, err := sweep.Run(ctx, exec, anniversary, sweep.Slice(due), cfg)
	fmt.Println(err)
	fmt.Println(rep)
	for _, f := range rep.Failures {
		fmt.Println(f)
	}
	fmt.Println("codes created in both ticks:", created.Load())
	// Output:
	// <nil>
	// candidates=6 applied=3 already_applied=2 invalid=1 provider_calls=3 saved_by_preflight=2 reconciled=0 lookups=1 batches=1 failures=1
	// #5 <no key> invalid: loyalty.promo: key: idempotency: invalid key in namespace loyalty.promo, part sub: empty value
	// codes created in both ticks: 5
}

func ExamplePages() {
	// A keyset-paginated candidate query: the cursor is the last id seen.
	table := []string{"u_1", "u_2", "u_3", "u_4", "u_5"}
	src := sweep.Pages(func(ctx context.Context, cursor string) ([]string, string, error) {
		// SELECT user_id FROM subscriptions WHERE user_id > $1 ORDER BY user_id LIMIT 2
		var page []string
		for _, id := range table {
			if id > cursor && len(page) < 2 {
				page = append(page, id)
			}
		}
		if len(page) == 0 {
			return nil, "", nil
		}
		return page, page[len(page)-1], nil
	})
	_ = src(context.Background(), func(page []string) error {
		fmt.Println(page)
		return nil
	})
	// Output:
	// [u_1 u_2]
	// [u_3 u_4]
	// [u_5]
}
