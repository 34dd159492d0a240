package httpeffect_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
)

func ExampleEffect() {
	// An affiliate network's postback endpoint. It ignores Idempotency-Key:
	// every request it gets counts as a conversion.
	var received atomic.Int64
	network := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer network.Close()

	type conversion struct{ Order, Affiliate string }
	keys := idempotency.KeySpace{Namespace: "aff.postback"}
	postback := httpeffect.Effect("aff.postback",
		func(c conversion) (idempotency.Key, error) {
			return keys.Key(idempotency.Str("order", c.Order))
		},
		// Called for every attempt: a fresh request each time.
		func(ctx context.Context, c conversion) (*http.Request, error) {
			q := url.Values{"order": {c.Order}, "aff": {c.Affiliate}}
			return http.NewRequestWithContext(ctx, http.MethodPost, network.URL+"/pb?"+q.Encode(), nil)
		},
		&httpeffect.Config{ReceiverIgnoresKey: true},
	)

	exec, _ := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
	// The order webhook is delivered three times.
	for range 3 {
		res, err := idempotency.Run(context.Background(), exec, postback, conversion{"ord_1", "aff_7"})
		fmt.Println(res.Outcome, res.Value.Status, err)
	}
	fmt.Println("postbacks received:", received.Load())
	// Output:
	// applied 204 <nil>
	// already_applied 204 <nil>
	// already_applied 204 <nil>
	// postbacks received: 1
}

func ExampleDo() {
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("received key:", r.Header.Get("Idempotency-Key"))
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer provider.Close()

	key := idempotency.KeySpace{Namespace: "orders.refund"}.MustKey(idempotency.Str("request", "rr_1"))
	req, _ := http.NewRequest(http.MethodPost, provider.URL+"/refunds", nil)
	_, err := httpeffect.Do(context.Background(), key, req, nil)
	class, after := idempotency.Classify(err)
	fmt.Println(class, after)
	// Output:
	// received key: orders.refund:v1:request=rr_1
	// not_acted 30s
}
