// Package crosspkg uses a helper of another package through its fact.
package crosspkg

import (
	"github.com/effectonce/effectonce/idempotency"

	"example.com/helpers"
)

var keys = idempotency.KeySpace{Namespace: "billing.statement"}

func statementKey(account string) (idempotency.Key, error) { // want statementKey:`param 0 to sink`
	return keys.Key(idempotency.Str("account", account), idempotency.Str("period", helpers.Period())) // want `^idempotency key derived from the clock: time.Now → .Format → period\(\) → helpers.Period\(\) → idempotency.Str\("period"\)$`
}
