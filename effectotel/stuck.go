package effectotel

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/effectonce/effectonce/idempotency"
)

// StuckLister is the part of idempotency.Operator that ObserveStuck needs.
// Both stores of this module implement it.
type StuckLister interface {
	ListStuck(ctx context.Context, req idempotency.ListStuckRequest) ([]idempotency.Record, error)
}

// StuckCounter is implemented by stores that can count their stuck records
// (idempotency.Stuck) without reading them. ObserveStuck prefers it to
// ListStuck: the count is exact and costs one aggregate query.
type StuckCounter interface {
	// CountStuck returns the number of stuck records per namespace, every
	// namespace that has one; namespaces without are absent.
	CountStuck(ctx context.Context) (map[string]int, error)
}

// ObserveStuck reports the records of store that nobody will finish on
// their own (in doubt, held past their lease, unknown past the provider's
// window) as the gauge effectonce.stuck.records, by namespace, read at each
// collection of the MeterProvider's readers.
//
// A store that implements StuckCounter is asked for its counts. Any other
// is read with one ListStuck of at most Config.StuckLimit records, whole
// records included, counted by namespace: past the limit the counts are
// lower bounds. Keep the collection interval in minutes, not seconds, for a
// large ledger.
//
// namespaces are always reported, at 0 when they have no stuck record, so
// an alert on "stuck > 0" resolves instead of going silent; so is every
// namespace seen stuck earlier. Every process observing the same ledger
// reports the same numbers: aggregate across instances with max, never
// sum. Unregister the returned registration to stop; a failed read reports
// nothing for that collection and returns the error to the SDK, which
// hands it to otel.Handle.
func (i *Instrumentation) ObserveStuck(store StuckLister, namespaces ...string) (metric.Registration, error) {
	if store == nil {
		return nil, errors.New("effectotel: ObserveStuck: nil store")
	}
	o := &stuckObserver{store: store, limit: i.stuckLimit, known: map[string]bool{}}
	for _, ns := range namespaces {
		o.known[ns] = true
	}
	reg, err := i.meter.RegisterCallback(func(ctx context.Context, obs metric.Observer) error {
		counts, err := o.count(ctx)
		if err != nil {
			return fmt.Errorf("effectotel: stuck records: %w", err)
		}
		for ns, n := range counts {
			obs.ObserveInt64(i.stuck, int64(n), metric.WithAttributeSet(attribute.NewSet(AttrNamespace.String(ns))))
		}
		return nil
	}, i.stuck)
	if err != nil {
		return nil, fmt.Errorf("effectotel: ObserveStuck: %w", err)
	}
	return reg, nil
}

type stuckObserver struct {
	store StuckLister
	limit int

	mu    sync.Mutex // collections by several readers may overlap
	known map[string]bool
}

// count returns the stuck records per namespace, with every known
// namespace present.
func (o *stuckObserver) count(ctx context.Context) (map[string]int, error) {
	var counts map[string]int
	if c, ok := o.store.(StuckCounter); ok {
		m, err := c.CountStuck(ctx)
		if err != nil {
			return nil, err
		}
		counts = make(map[string]int, len(m))
		for ns, n := range m {
			counts[ns] = n
		}
	} else {
		recs, err := o.store.ListStuck(ctx, idempotency.ListStuckRequest{Limit: o.limit})
		if err != nil {
			return nil, err
		}
		counts = map[string]int{}
		for _, r := range recs {
			counts[r.Namespace]++
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for ns := range counts {
		o.known[ns] = true
	}
	for ns := range o.known {
		if _, ok := counts[ns]; !ok {
			counts[ns] = 0
		}
	}
	return counts, nil
}
