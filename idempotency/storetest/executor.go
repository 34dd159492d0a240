package storetest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/effectonce/effectonce/idempotency"
)

var executorCases = []testCase{
	{"ExecutorRunsOnceUnderConcurrency", func(t *testing.T, b *bundle) {
		x, err := idempotency.NewExecutor(b.store, &idempotency.Config{Now: b.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int32
		ks := idempotency.KeySpace{Namespace: "storetest"}
		eff := &idempotency.Effect[string, string]{
			Name: "storetest.once",
			Key:  func(in string) (idempotency.Key, error) { return ks.Key(idempotency.Str("id", in)) },
			Call: func(ctx context.Context, k idempotency.Key, in string) (string, error) {
				calls.Add(1)
				return "result-" + in, nil
			},
		}
		id := newKey()
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = idempotency.Run(b.ctx, x, eff, id)
			}()
		}
		wg.Wait()
		res, err := idempotency.Run(b.ctx, x, eff, id)
		if err != nil {
			t.Fatal(err)
		}
		if calls.Load() != 1 || res.Outcome != idempotency.OutcomeAlreadyApplied || res.Value != "result-"+id {
			t.Fatalf("16 concurrent runs + 1: want 1 provider call and the stored result, got %d calls, %v %q", calls.Load(), res.Outcome, res.Value)
		}
		if len(res.Record.Evidence) != 1 || res.Record.Evidence[0].Class != idempotency.AttemptDone {
			t.Fatalf("the record keeps the evidence of its one attempt: %+v", res.Record.Evidence)
		}
	}},
}
