package effectotel_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/effectonce/effectonce/effectotel"
	"github.com/effectonce/effectonce/idempotency"
)

// harness is an Instrumentation on the SDK's in-memory reader and span
// recorder.
type harness struct {
	inst   *effectotel.Instrumentation
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
}

func newHarness(t *testing.T, cfg *effectotel.Config) *harness {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() {
		require.NoError(t, mp.Shutdown(context.Background()))
		require.NoError(t, tp.Shutdown(context.Background()))
	})
	var c effectotel.Config
	if cfg != nil {
		c = *cfg
	}
	c.TracerProvider, c.MeterProvider = tp, mp
	inst, err := effectotel.New(&c)
	require.NoError(t, err)
	return &harness{inst: inst, reader: reader, spans: spans, tp: tp}
}

func (h *harness) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, h.reader.Collect(context.Background(), &rm))
	return rm
}

// metric returns the named instrument's data, and whether it has any.
func metricNamed(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// attrs renders an attribute set as "effect=x,outcome=y" (sorted, without
// the effectonce. prefix), for exact map comparisons.
func attrs(s attribute.Set) string {
	parts := make([]string, 0, s.Len())
	for _, kv := range s.ToSlice() {
		parts = append(parts, strings.TrimPrefix(string(kv.Key), "effectonce.")+"="+kv.Value.Emit())
	}
	return strings.Join(parts, ",")
}

// counts returns a counter's (or gauge's) value per attribute set; empty
// when the instrument recorded nothing.
func counts(t *testing.T, rm metricdata.ResourceMetrics, name string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	m, ok := metricNamed(rm, name)
	if !ok {
		return out
	}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		require.True(t, d.IsMonotonic, "%s is a counter", name)
		for _, dp := range d.DataPoints {
			out[attrs(dp.Attributes)] = dp.Value
		}
	case metricdata.Gauge[int64]:
		for _, dp := range d.DataPoints {
			out[attrs(dp.Attributes)] = dp.Value
		}
	default:
		t.Fatalf("%s: unexpected data %T", name, m.Data)
	}
	return out
}

// histogram returns a histogram's count and sum per attribute set.
func histogram(t *testing.T, rm metricdata.ResourceMetrics, name string) (map[string]uint64, map[string]float64) {
	t.Helper()
	n, sum := map[string]uint64{}, map[string]float64{}
	m, ok := metricNamed(rm, name)
	if !ok {
		return n, sum
	}
	d, ok := m.Data.(metricdata.Histogram[float64])
	require.True(t, ok, "%s: unexpected data %T", name, m.Data)
	for _, dp := range d.DataPoints {
		n[attrs(dp.Attributes)] = dp.Count
		sum[attrs(dp.Attributes)] = dp.Sum
	}
	return n, sum
}

// spansNamed returns the ended spans whose name starts with prefix.
func (h *harness) spansNamed(prefix string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if strings.HasPrefix(s.Name(), prefix) {
			out = append(out, s)
		}
	}
	return out
}

// attr returns a span attribute's value; a missing one fails the test.
func attr(t *testing.T, kvs []attribute.KeyValue, k attribute.Key) attribute.Value {
	t.Helper()
	for _, kv := range kvs {
		if kv.Key == k {
			return kv.Value
		}
	}
	t.Fatalf("no attribute %s in %v", k, kvs)
	return attribute.Value{}
}

func hasAttr(kvs []attribute.KeyValue, k attribute.Key) bool {
	return slices.ContainsFunc(kvs, func(kv attribute.KeyValue) bool { return kv.Key == k })
}

// requireNoLeak checks every span (name, attributes, events, status) and
// every metric data point's attributes for each forbidden string.
func (h *harness) requireNoLeak(t *testing.T, rm metricdata.ResourceMetrics, forbidden ...string) {
	t.Helper()
	var seen []string
	add := func(kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			seen = append(seen, string(kv.Key)+"="+kv.Value.Emit())
		}
	}
	for _, s := range h.spans.Ended() {
		seen = append(seen, s.Name(), s.Status().Description)
		add(s.Attributes())
		for _, e := range s.Events() {
			seen = append(seen, e.Name)
			add(e.Attributes)
		}
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					add(dp.Attributes.ToSlice())
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					add(dp.Attributes.ToSlice())
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					add(dp.Attributes.ToSlice())
				}
			default:
				t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	require.NotEmpty(t, seen)
	for _, s := range seen {
		for _, f := range forbidden {
			require.NotContains(t, s, f, "emitted telemetry must not contain %q", f)
		}
	}
}

// events collects the executor's events, as a user's own OnOutcome would.
type events struct {
	mu  sync.Mutex
	evs []idempotency.Event
}

func (e *events) record(_ context.Context, ev idempotency.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.evs = append(e.evs, ev)
}

func (e *events) all() []idempotency.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.evs)
}

// member is a sweep candidate: the email is business identity (and must
// never reach telemetry); fate tells the fake provider how to answer.
type member struct {
	Email string
	Fate  string
}

var memberKeys = idempotency.KeySpace{Namespace: "loyalty.promo"}

// provider answers by the member's fate, reporting a status code and a
// request id as a real adapter would. Its error messages quote the email,
// as providers' messages quote what they were sent.
type provider struct {
	mu    sync.Mutex
	calls int
}

func (p *provider) call(ctx context.Context, key idempotency.Key, m member) (string, error) {
	p.mu.Lock()
	p.calls++
	n := p.calls
	p.mu.Unlock()
	reqID := fmt.Sprintf("req_%d", n)
	switch m.Fate {
	case "refuse":
		idempotency.Observe(ctx, idempotency.Observation{Status: 402, RequestID: reqID})
		return "", idempotency.Permanent(fmt.Errorf("card of %s declined", m.Email))
	case "throttle":
		idempotency.Observe(ctx, idempotency.Observation{Status: 429, RequestID: reqID})
		return "", idempotency.NotActed(fmt.Errorf("429 for %s", m.Email), 0)
	case "timeout":
		return "", idempotency.Unknown(fmt.Errorf("timeout creating a code for %s", m.Email), 0)
	}
	idempotency.Observe(ctx, idempotency.Observation{Status: 200, RequestID: reqID})
	return "promo_for_" + m.Email, nil
}

func (p *provider) effect() *idempotency.Effect[member, string] {
	return &idempotency.Effect[member, string]{
		Name: "loyalty.promo",
		Key: func(m member) (idempotency.Key, error) {
			return memberKeys.Key(idempotency.Str("email", m.Email))
		},
		Call: p.call,
	}
}
