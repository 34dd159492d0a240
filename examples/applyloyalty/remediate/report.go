package remediate

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

// Report says what a run did, or what a dry run would do.
type Report struct {
	Incident string
	DryRun   bool
	// Users are the incident's affected users, from its plan, by user id.
	Users []User
	// OtherIncidents counts, by incident id, duplicates the audit found
	// that belong to another incident's plan: this run leaves them alone.
	// Run with that incident id to finish them.
	OtherIncidents map[string]int
	// NoAddress lists the affected users without an email address (dry
	// run only; a real run reports them as failed apologies).
	NoAddress []string

	// The steps, in the order they run: deactivating the duplicate codes
	// (one intent per code), crediting and emailing (one per user).
	Deactivate, Credit, Apology Step

	CreditAmount int64 // per user, in the currency's smallest unit
	Currency     string

	// finished: the counts were read back after the last step (a run that
	// returned an error knows only what its sweeps reported).
	finished bool
}

// User is one affected user of the plan.
type User struct {
	UserID     string
	CustomerID string
	Kept       Code   // the oldest row, kept
	Revoke     []Code // the others
	// Done: every step is done for the user (after the run).
	Done bool
}

// Code is one loyalty_discounts row and its promotion code.
type Code struct {
	DiscountID      int64
	PromotionCodeID string // empty for the kept row
	Code            string

	idempotencyKey string
}

// Step is one step's counts.
type Step struct {
	// Planned is the number of intents: duplicate codes, or users.
	Planned int
	// DoneBefore is how many were done before this run.
	DoneBefore int
	// Done is how many are done at the end (a dry run: now).
	Done int
	// Waiting counts users this run held back because an earlier step of
	// theirs is not done (Credit, Apology).
	Waiting int
	// Sweep is this run's sweep (zero in a dry run).
	Sweep sweep.Report
}

// Left is how many intents remain to be done.
func (s Step) Left() int { return s.Planned - s.Done }

// Complete reports whether every step is done for every affected user and
// no duplicate belongs to another incident. A run that is not complete
// should be run again (after the lease of a killed run's claims: 5
// minutes).
func (r Report) Complete() bool {
	return r.finished && r.Deactivate.Left() == 0 && r.Credit.Left() == 0 && r.Apology.Left() == 0 && len(r.OtherIncidents) == 0
}

// ProviderCalls is the number of provider calls the run made, in-run
// retries included; for a dry run, the number it would make.
func (r Report) ProviderCalls() int {
	if r.DryRun {
		return r.Deactivate.Left() + r.Credit.Left() + r.Apology.Left()
	}
	return r.Deactivate.Sweep.ProviderCalls + r.Credit.Sweep.ProviderCalls + r.Apology.Sweep.ProviderCalls
}

// String is the report as the command prints it.
func (r Report) String() string {
	var b strings.Builder
	mode := "run"
	if r.DryRun {
		mode = "dry run: nothing sent, nothing kept"
	}
	fmt.Fprintf(&b, "remediation of incident %s (%s)\n", r.Incident, mode)
	nrev := 0
	for _, u := range r.Users {
		nrev += len(u.Revoke)
	}
	fmt.Fprintf(&b, "plan: %d users held more than one active loyalty discount; keep the oldest code of each, revoke %d\n",
		len(r.Users), nrev)
	if r.DryRun {
		for _, u := range r.Users {
			revoke := make([]string, len(u.Revoke))
			for i, c := range u.Revoke {
				revoke[i] = c.Code + " (" + c.PromotionCodeID + ")"
			}
			fmt.Fprintf(&b, "  %-10s keep %-18s revoke %s\n", u.UserID, u.Kept.Code, strings.Join(revoke, ", "))
		}
	}
	for _, inc := range slices.Sorted(maps.Keys(r.OtherIncidents)) {
		fmt.Fprintf(&b, "left alone: %d duplicates already planned under incident %s (run with that id)\n", r.OtherIncidents[inc], inc)
	}
	each := formatAmount(r.CreditAmount, r.Currency)
	if r.DryRun {
		fmt.Fprintf(&b, "would deactivate %4d promotion codes at Stripe (%d of %d done already)\n",
			r.Deactivate.Left(), r.Deactivate.Done, r.Deactivate.Planned)
		fmt.Fprintf(&b, "would credit     %4d customers %s each, %s in all (%d of %d done already)\n",
			r.Credit.Left(), each, formatAmount(int64(r.Credit.Left())*r.CreditAmount, r.Currency), r.Credit.Done, r.Credit.Planned)
		fmt.Fprintf(&b, "would send       %4d apology emails (%d of %d done already)\n",
			r.Apology.Left(), r.Apology.Done, r.Apology.Planned)
		if len(r.NoAddress) > 0 {
			fmt.Fprintf(&b, "no email address on file: %s (their apology will fail until one is)\n", strings.Join(r.NoAddress, ", "))
		}
		fmt.Fprintf(&b, "cost: %d provider calls, %s in credits\n", r.ProviderCalls(),
			formatAmount(int64(r.Credit.Left())*r.CreditAmount, r.Currency))
		return b.String()
	}
	if !r.finished {
		fmt.Fprintf(&b, "interrupted: what this run's sweeps did before it stopped (run again):\n")
		for _, s := range []struct {
			name string
			step Step
		}{{"deactivate", r.Deactivate}, {"credit", r.Credit}, {"apology", r.Apology}} {
			if s.step.Sweep.Candidates > 0 {
				fmt.Fprintf(&b, "%-10s %s\n", s.name+":", s.step.Sweep)
				for _, f := range s.step.Sweep.Failures {
					fmt.Fprintf(&b, "  failed %s\n", f)
				}
			}
		}
		return b.String()
	}
	r.step(&b, "deactivate", "codes", r.Deactivate)
	r.step(&b, "credit", "users", r.Credit)
	fmt.Fprintf(&b, "  credited this run: %s (%s each)\n",
		formatAmount(int64(r.Credit.Sweep.Outcomes[idempotency.OutcomeApplied]+r.Credit.Sweep.Outcomes[idempotency.OutcomeReconciled])*r.CreditAmount, r.Currency), each)
	r.step(&b, "apology", "users", r.Apology)
	var left []string
	for _, u := range r.Users {
		if !u.Done {
			left = append(left, u.UserID)
		}
	}
	switch {
	case r.Complete():
		fmt.Fprintf(&b, "complete: %d users remediated, %d provider calls this run\n", len(r.Users), r.ProviderCalls())
	default:
		fmt.Fprintf(&b, "NOT complete: %d %s unfinished (%s); %d provider calls this run; run again\n",
			len(left), plural(len(left), "user", "users"), strings.Join(left, ", "), r.ProviderCalls())
	}
	return b.String()
}

func (r Report) step(b *strings.Builder, name, unit string, s Step) {
	fmt.Fprintf(b, "%-10s %d of %d %s done (%d this run, %d before), %d provider calls",
		name+":", s.Done, s.Planned, unit, s.Done-s.DoneBefore, s.DoneBefore, s.Sweep.ProviderCalls)
	if n := s.Sweep.Outcomes[idempotency.OutcomeInFlight]; n > 0 {
		fmt.Fprintf(b, ", %d held by another run (run again after its lease)", n)
	}
	if s.Waiting > 0 {
		fmt.Fprintf(b, ", %d %s waiting for an earlier step", s.Waiting, plural(s.Waiting, "user", "users"))
	}
	b.WriteByte('\n')
	for _, f := range s.Sweep.Failures {
		fmt.Fprintf(b, "  failed %s\n", f)
	}
}

// zeroDecimal lists Stripe's zero-decimal currencies, whose amounts are
// whole units.
var zeroDecimal = []string{"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}

// formatAmount prints an amount in the currency's smallest unit as units:
// 2900 usd is "29.00 USD".
func formatAmount(amount int64, currency string) string {
	cur := strings.ToUpper(currency)
	if slices.Contains(zeroDecimal, strings.ToLower(currency)) {
		return fmt.Sprintf("%d %s", amount, cur)
	}
	sign := ""
	if amount < 0 {
		sign, amount = "-", -amount
	}
	return fmt.Sprintf("%s%d.%02d %s", sign, amount/100, amount%100, cur)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
