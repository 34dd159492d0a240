package stripeeffect

import (
	"context"
	"strings"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
)

// Credit is a credit to a customer's balance (a customer balance
// transaction), such as a month offered with an apology. It is also the
// effect's fingerprint (its JSON encoding).
type Credit struct {
	// Customer is the customer's id. Required.
	Customer string `json:"customer"`
	// Amount is the credit, positive, in the currency's smallest unit. It
	// is sent to Stripe as a negative amount, which is how Stripe writes a
	// credit. Required.
	Amount int64 `json:"amount"`
	// Currency is the three-letter ISO code, such as "usd". Required.
	Currency string `json:"currency"`
	// Description is shown to the customer on invoices.
	Description string `json:"description,omitempty"`
	// Metadata is attached to the transaction, with MetadataKey added.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// CreditResult is what the ledger keeps of a balance credit.
type CreditResult struct {
	ID       string `json:"id"`
	Customer string `json:"customer,omitempty"`
	// Amount is the credit, positive, as in Credit.Amount (the Stripe
	// transaction's amount is its negation).
	Amount   int64  `json:"amount"`
	Currency string `json:"currency,omitempty"`
	// EndingBalance is the customer's balance after the credit, as Stripe
	// reports it (negative: credit the customer can spend).
	EndingBalance int64 `json:"ending_balance"`
	// Replayed reports that Stripe answered with the saved response of an
	// earlier request under the same key: the credit was given then.
	Replayed bool `json:"replayed,omitempty"`
}

// CreditResultOf returns the ledger's view of bt, Replayed included.
func CreditResultOf(bt *stripe.CustomerBalanceTransaction) CreditResult {
	if bt == nil {
		return CreditResult{}
	}
	r := CreditResult{ID: bt.ID, Amount: -bt.Amount, Currency: string(bt.Currency), EndingBalance: bt.EndingBalance,
		Replayed: Replayed(bt.LastResponse)}
	if bt.Customer != nil {
		r.Customer = bt.Customer.ID
	}
	return r
}

// CreditBalance credits a customer's balance by c.Amount, sending key as the
// Idempotency-Key and its business key (key.Base()) in the metadata under
// MetadataKey. A repeat with the same key and c within DedupWindow returns
// the same transaction (Replayed). Errors are classified (see Classify) and
// Stripe's answer is reported with idempotency.Observe. A zero key, a
// missing customer or currency, or an amount that is not positive sends
// nothing.
func CreditBalance(ctx context.Context, api *client.API, key idempotency.Key, c Credit) (*stripe.CustomerBalanceTransaction, error) {
	params := &stripe.CustomerBalanceTransactionParams{}
	sent, err := prepare(ctx, api != nil && api.CustomerBalanceTransactions != nil, &params.Params, key)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.TrimSpace(c.Customer) == "":
		return nil, invalid("credit without a customer")
	case strings.TrimSpace(c.Currency) == "":
		return nil, invalid("credit without a currency")
	case c.Amount <= 0:
		return nil, invalid("credit of %d: the amount must be positive (it is sent negated)", c.Amount)
	}
	params.Customer = stripe.String(c.Customer)
	params.Amount = stripe.Int64(-c.Amount)
	params.Currency = stripe.String(c.Currency)
	if c.Description != "" {
		params.Description = stripe.String(c.Description)
	}
	params.Metadata = metadataWithKey(c.Metadata, key)
	bt, err := api.CustomerBalanceTransactions.New(params)
	var resp *stripe.APIResponse
	if bt != nil {
		resp = bt.LastResponse
	}
	if err := sent.answered(ctx, resp, err, "credit customer "+c.Customer); err != nil {
		return nil, err
	}
	return bt, nil
}

// CreditEffect returns an effect that gives the balance credit build
// describes for each input, with CreditBalance. It is set for Stripe like
// PromotionCodeEffect: Fingerprint is the JSON of build(in), ExpiredRetry
// with DedupWindow 24 h, Find is FindCredit (the customer's balance
// transactions), Retry a copy of DefaultRetry.
//
// It panics if api or build is nil.
func CreditEffect[In any](api *client.API, name string, key func(In) (idempotency.Key, error), build func(In) Credit) *idempotency.Effect[In, CreditResult] {
	return newEffect(api, name, key, build, CreditBalance, CreditResultOf, FindCredit, true)
}
