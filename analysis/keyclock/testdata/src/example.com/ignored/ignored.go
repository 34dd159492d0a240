// Package ignored holds deliberate clock keys, suppressed.
package ignored

import (
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

var keys = idempotency.KeySpace{Namespace: "contract"}

func sameLine() idempotency.Key { // want sameLine:"result from the clock"
	return keys.MustKey(idempotency.Int("bucket", time.Now().UnixNano())) //effectoncevet:ignore the contract test must see a clock-derived key
}

func lineAbove() idempotency.Key { // want lineAbove:"result from the clock"
	//effectoncevet:ignore the replay shows the incident's key
	return keys.MustKey(idempotency.Int("bucket", time.Now().UnixNano()))
}

// A directive trailing other code covers only its own line.
func trailing() idempotency.Key { // want trailing:"result from the clock"
	n := time.Now()                                          //effectoncevet:ignore this is not about the next line
	return keys.MustKey(idempotency.Int("bucket", n.Unix())) // want `the clock: time.Now → .Unix → idempotency.Int\("bucket"\)`
}

// A directive without a reason is reported and suppresses nothing.
func noReason() idempotency.Key { // want noReason:"result from the clock"
	// want +1 `effectoncevet:ignore needs a reason`
	//effectoncevet:ignore
	return keys.MustKey(idempotency.Int("bucket", time.Now().Unix())) // want `the clock: time.Now → .Unix → idempotency.Int\("bucket"\)`
}

// Only the directive's exact name counts.
func otherName() idempotency.Key { // want otherName:"result from the clock"
	return keys.MustKey(idempotency.Int("bucket", time.Now().Unix())) //effectoncevet:ignored not a directive // want `the clock`
}
