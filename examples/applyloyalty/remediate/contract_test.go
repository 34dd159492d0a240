package remediate

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// The contract test of each step's effect, on the PostgreSQL ledger, against
// what the provider really did.

func (f *fixture) newStore(t *testing.T) func(now func() time.Time) idempotency.Store {
	return func(now func() time.Time) idempotency.Store {
		s, err := pgguard.New(f.pool, &pgguard.Config{Now: now})
		require.NoError(t, err)
		return s
	}
}

func affectedInputs() []Affected {
	in := make([]Affected, 4)
	for i := range in {
		u := fmt.Sprintf("c%d", i)
		in[i] = Affected{Incident: incident, UserID: u, CustomerID: "cus_" + u, KeptCode: "KEEP-" + u, Email: u + "@example.test"}
	}
	return in
}

func TestDeactivateEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	r := f.remediation(t, nil)
	var in []Duplicate
	for i := range 4 {
		params := &stripe.PromotionCodeParams{Coupon: stripe.String(coupon), Code: stripe.String(fmt.Sprintf("CONTRACT-%d", i))}
		params.SetIdempotencyKey(fmt.Sprintf("contract-seed-%d", i))
		pc, err := f.api.PromotionCodes.New(params)
		require.NoError(t, err)
		in = append(in, Duplicate{Incident: incident, UserID: fmt.Sprintf("c%d", i), PromotionCodeID: pc.ID, Code: pc.Code})
	}
	// Deactivations Stripe really executed (replays are not new ones).
	executed := func() int {
		n := 0
		for _, rec := range f.fake.AllRequests() {
			if rec.Op == stripefake.OpUpdate && rec.Executed && !rec.Replayed {
				n++
			}
		}
		return n
	}
	ok := effecttest.Run(t, effecttest.Case[Duplicate, stripeeffect.PromotionCodeResult]{
		Effect:       r.deactivate,
		Inputs:       in,
		SkipMismatch: "the key is the promotion code, which is the whole payload: no other payload can share a key",
		NewStore:     f.newStore(t),
		Effects:      executed,
		Clock:        f.clock,
	})
	require.True(t, ok)
}

func TestCreditEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	r := f.remediation(t, nil)
	ok := effecttest.Run(t, effecttest.Case[Affected, stripeeffect.CreditResult]{
		Effect:   r.credit,
		Inputs:   affectedInputs(),
		Mutate:   func(a Affected) Affected { a.CustomerID += "_other"; return a }, // same user and incident, another customer
		NewStore: f.newStore(t),
		Effects:  func() int { return f.fake.Created(stripefake.KindCustomerBalanceTransaction) },
		Clock:    f.clock,
	})
	require.True(t, ok)
}

func TestApologyEffectContract(t *testing.T) {
	t.Parallel()
	f := setup(t)
	r := f.remediation(t, nil)
	ok := effecttest.Run(t, effecttest.Case[Affected, httpeffect.Response]{
		Effect:   r.apology,
		Inputs:   affectedInputs(),
		Mutate:   func(a Affected) Affected { a.Email = "other-" + a.Email; return a }, // same user and incident, another address
		NewStore: f.newStore(t),
		// The provider deduplicates by key: count the emails it sent,
		// never its requests (a takeover's replay is a request too).
		Effects: f.mail.Effects,
		Clock:   f.clock,
	})
	require.True(t, ok)
}
