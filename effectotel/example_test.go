package effectotel_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"slices"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/effectonce/effectonce/effectotel"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

type subscriber struct{ User, Sub string }

var promoKeys = idempotency.KeySpace{Namespace: "loyalty.promo"}

func promoEffect() *idempotency.Effect[subscriber, string] {
	return &idempotency.Effect[subscriber, string]{
		Name: "loyalty.promo",
		Key: func(s subscriber) (idempotency.Key, error) {
			return promoKeys.Key(idempotency.Str("user", s.User), idempotency.Str("sub", s.Sub), idempotency.Int("milestone", 12))
		},
		Call: func(ctx context.Context, key idempotency.Key, s subscriber) (string, error) {
			return "promo_" + s.User, nil // create the code with key.String() as Idempotency-Key
		},
	}
}

// The wiring: where the executor is built, and after each sweep.
func Example() {
	ctx := context.Background()
	ledger := idempotency.NewMemStore(nil) // pgguard.New(pool, nil) in a service
	promo := promoEffect()
	due := []subscriber{{"u_1", "sub_1"}, {"u_2", "sub_2"}}

	inst, err := effectotel.New(nil) // the global TracerProvider and MeterProvider
	if err != nil {
		log.Fatal(err)
	}
	exec, err := idempotency.NewExecutor(ledger, inst.Configure(&idempotency.Config{Logger: slog.Default()}))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := inst.ObserveStuck(ledger); err != nil { // stuck records per namespace
		log.Fatal(err)
	}
	// A cron tick; its report counts even with an error (a partial sweep).
	rep, err := sweep.Run(ctx, exec, promo, sweep.Slice(due), nil)
	inst.RecordSweep(ctx, promo.Name, rep)
	if err != nil {
		log.Print(err)
	}
}

// Reading the numbers back with the SDK's in-memory reader, as a test of
// your own wiring would.
func ExampleInstrumentation_RecordSweep() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	inst, _ := effectotel.New(&effectotel.Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	exec, _ := idempotency.NewExecutor(idempotency.NewMemStore(nil), inst.Configure(nil))
	promo := promoEffect()

	for _, due := range [][]subscriber{
		{{"u_1", "sub_1"}, {"u_2", "sub_2"}},                   // the first tick
		{{"u_1", "sub_1"}, {"u_2", "sub_2"}, {"u_3", "sub_3"}}, // the next one sees them again
	} {
		rep, _ := sweep.Run(ctx, exec, promo, sweep.Slice(due), nil)
		inst.RecordSweep(ctx, promo.Name, rep)
	}

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(ctx, &rm)
	var lines []string
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if sum, ok := m.Data.(metricdata.Sum[int64]); ok {
			for _, dp := range sum.DataPoints {
				lines = append(lines, fmt.Sprintf("%s{%s} %d", m.Name, dp.Attributes.Encoded(attribute.DefaultEncoder()), dp.Value))
			}
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	// Output:
	// effectonce.attempts{effectonce.attempt.class=done,effectonce.effect=loyalty.promo} 3
	// effectonce.provider.calls{effectonce.effect=loyalty.promo} 3
	// effectonce.runs{effectonce.effect=loyalty.promo,effectonce.outcome=applied} 3
	// effectonce.sweep.candidates{effectonce.effect=loyalty.promo,effectonce.outcome=already_applied} 2
	// effectonce.sweep.candidates{effectonce.effect=loyalty.promo,effectonce.outcome=applied} 3
	// effectonce.sweep.saved_by_preflight{effectonce.effect=loyalty.promo} 2
}
