package idempotency_test

import (
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/storetest"
)

func TestMemStoreConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, now func() time.Time) idempotency.Store {
		return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now})
	})
}
