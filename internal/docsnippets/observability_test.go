package docsnippets_test

// The source of docs/observability.md's Go block, run on PostgreSQL with the
// OpenTelemetry SDK's in-memory reader.

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/effectonce/effectonce/effectotel"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

func observabilityWiring(ctx context.Context, ledger *pgguard.Store, logger *slog.Logger,
	promo *idempotency.Effect[string, string], src sweep.Source[string]) error {
	// snippet:observability-wiring
	inst, err := effectotel.New(nil) // the global TracerProvider and MeterProvider
	if err != nil {
		return err
	}
	exec, err := idempotency.NewExecutor(ledger, inst.Configure(&idempotency.Config{Logger: logger}))
	if err != nil {
		return err
	}
	if _, err := inst.ObserveStuck(ledger); err != nil { // stuck records per namespace
		return err
	}

	// Each cron tick:
	rep, err := sweep.Run(ctx, exec, promo, src, nil)
	inst.RecordSweep(ctx, promo.Name, rep) // even when err != nil: the partial report counts
	// end snippet
	return err
}

func TestObservabilityWiringCountsTheSweep(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	ledger, err := pgguard.New(pool, nil)
	require.NoError(t, err)

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { require.NoError(t, mp.Shutdown(ctx)) }()
	old := otel.GetMeterProvider()
	otel.SetMeterProvider(mp) // the global provider the wiring uses
	defer otel.SetMeterProvider(old)

	keys := idempotency.KeySpace{Namespace: "loyalty.promo"}
	promo := &idempotency.Effect[string, string]{
		Name: "loyalty.promo",
		Key:  func(u string) (idempotency.Key, error) { return keys.Key(idempotency.Str("user", u)) },
		Call: func(ctx context.Context, k idempotency.Key, u string) (string, error) { return "promo_" + u, nil },
	}
	require.NoError(t, observabilityWiring(ctx, ledger, nil, promo, sweep.Slice([]string{"u1", "u2", "u3"})))

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	runs := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				runs[m.Name] += dp.Value
			}
		}
	}
	require.Equal(t, int64(3), runs["effectonce.runs"], "%v", runs)
	require.Equal(t, int64(3), runs["effectonce.sweep.candidates"], "%v", runs)
}
