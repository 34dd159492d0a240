package clocktest_test

import (
	"context"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency/clocktest"
)

func TestSleepMovesTheClockAndReportsTheContext(t *testing.T) {
	c := clocktest.New()
	if err := c.Sleep(context.Background(), 90*time.Second); err != nil {
		t.Fatalf("Sleep: %v", err)
	}
	if got := c.Now().Sub(clocktest.Start); got != 90*time.Second {
		t.Fatalf("the clock moved %v, want 90s", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Sleep(ctx, time.Second); err != context.Canceled {
		t.Fatalf("Sleep with a cancelled context: %v, want context.Canceled", err)
	}
}
