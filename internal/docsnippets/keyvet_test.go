package docsnippets_test

// The sources of docs/keyvet.md's Go blocks. They compile; the repository's
// own keyvet step (go vet -vettool=effectoncevet ./...) analyses them too,
// which is why the clock-derived key docs/keyvet.md shows as a finding
// carries a directive the reader does not see.

import (
	"context"
	"time"

	"golang.org/x/tools/go/analysis/multichecker"

	"github.com/effectonce/effectonce/analysis/keyclock"
	"github.com/effectonce/effectonce/idempotency"
)

type payout struct {
	PayeeID string
	PaidAt  time.Time
}

func keyvetBusinessTime(keys idempotency.KeySpace, p payout, taxZone *time.Location) {
	// snippet:keyvet-business-time
	keys.Key(idempotency.Str("payee", p.PayeeID), idempotency.Int("year", int64(p.PaidAt.In(taxZone).Year()))) // fine
	// snippet:hide-next
	//effectoncevet:ignore docs/keyvet.md shows this key as the analyzer's finding
	keys.Key(idempotency.Str("payee", p.PayeeID), idempotency.Int("year", int64(time.Now().Year()))) // reported
	// end snippet
}

// keyvetMultichecker is never called: multichecker.Main owns the process.
func keyvetMultichecker() {
	// snippet:keyvet-multichecker
	multichecker.Main(keyclock.Analyzer /* your other analyzers */)
	// end snippet
}

type transfer struct{ ID string }

func keyvetIgnore(keys idempotency.KeySpace) *idempotency.Effect[transfer, string] {
	eff := &idempotency.Effect[transfer, string]{
		Name: "transfers.test",
		Call: func(context.Context, idempotency.Key, transfer) (string, error) { return "", nil },
	}
	// snippet:keyvet-ignore
	eff.Key = func(in transfer) (idempotency.Key, error) {
		//effectoncevet:ignore the contract test must see a clock-derived key
		return keys.Key(idempotency.Str("transfer", in.ID), idempotency.Int("bucket", time.Now().UnixNano()))
	}
	// end snippet
	return eff
}

var _, _, _ = keyvetBusinessTime, keyvetMultichecker, keyvetIgnore
