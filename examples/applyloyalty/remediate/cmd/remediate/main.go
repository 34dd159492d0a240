// Command remediate cleans up an incident's duplicate loyalty discounts with
// package remediate: it keeps each user's oldest code, deactivates the others
// at Stripe and revokes their rows, credits each affected user one month of
// Pro and sends each one apology email, every step once, however often it
// is run.
//
// Look first, then run, then run again until it says complete:
//
//	export DATABASE_URL=postgres://... STRIPE_SECRET_KEY=sk_live_... MAIL_API_KEY=...
//	remediate -incident INC-2025-07-LOYALTY-DUP -credit 2900 -currency usd \
//	    -mail-url https://mail.example.com/v1/emails -from care@example.com -dry-run
//	remediate -incident INC-2025-07-LOYALTY-DUP -credit 2900 -currency usd \
//	    -mail-url https://mail.example.com/v1/emails -from care@example.com
//
// The dry run prints the plan (who keeps which code, which codes are
// revoked) and what the run would cost (codes to deactivate, emails,
// credits and their total), and keeps nothing. The real run migrates the
// plan table and the ledger, prints a line per batch of each step and a
// final report. A run that was killed leaves claims under a lease (5
// minutes); a run at once reports them as held by another run, a run after
// the lease finishes them under the same keys.
//
// Exit status: 0 complete (or a dry run), 1 an error, 2 bad usage, 3 not
// complete yet: run again.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/time/rate"

	"github.com/effectonce/effectonce/examples/applyloyalty/remediate"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/stripeeffect"
)

const (
	exitOK         = 0
	exitError      = 1
	exitUsage      = 2
	exitIncomplete = 3
)

func main() {
	// An interrupt stops the run between effects; what was done is kept
	// and reported, and the next run goes on from there.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("remediate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		incident    = fs.String("incident", "", "the incident id, part of the credit's and the email's keys (required)")
		dryRun      = fs.Bool("dry-run", false, "report what would change and what it would cost; send and keep nothing")
		credit      = fs.Int64("credit", 0, "the apology credit per user, in the currency's smallest unit, e.g. 2900 for $29 (required)")
		currency    = fs.String("currency", "usd", "the credit's currency")
		mailURL     = fs.String("mail-url", "", "the email provider's send endpoint (required)")
		from        = fs.String("from", "", "the apology's sender address (required)")
		recipients  = fs.String("recipients-sql", "SELECT id, email FROM users WHERE id = ANY($1)", "the query that returns (user id, email) for the user ids in $1")
		stripeURL   = fs.String("stripe-url", "", "Stripe's API base URL (empty: api.stripe.com; a stripe-mock or a fake in tests)")
		concurrency = fs.Int("concurrency", sweep.DefaultConcurrency, "provider calls in flight at once, per step")
		perSecond   = fs.Float64("rate", 20, "provider calls per second at most, all steps together (0: unlimited)")
	)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: remediate -incident ID -credit AMOUNT -mail-url URL -from ADDRESS [-dry-run] [flags]")
		fmt.Fprintln(stderr, "environment: DATABASE_URL and STRIPE_SECRET_KEY (required), MAIL_API_KEY")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	usage := func(msg string) int {
		fmt.Fprintln(stderr, "remediate:", msg)
		fs.Usage()
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		return usage(fmt.Sprintf("unexpected arguments %q", fs.Args()))
	case *incident == "":
		return usage("-incident is required: the id is part of every credit's and email's key, so use the same one on every run")
	case *credit <= 0:
		return usage("-credit is required and positive")
	case *mailURL == "", *from == "":
		return usage("-mail-url and -from are required (a dry run checks them too)")
	case *concurrency < 1, *perSecond < 0:
		return usage("-concurrency must be at least 1 and -rate not negative")
	case getenv("DATABASE_URL") == "", getenv("STRIPE_SECRET_KEY") == "":
		return usage("DATABASE_URL and STRIPE_SECRET_KEY must be set")
	}

	fail := func(err error) int {
		fmt.Fprintln(stderr, "remediate:", err)
		return exitError
	}
	pool, err := pgxpool.New(ctx, getenv("DATABASE_URL"))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	cfg := remediate.Config{
		DB:         pool,
		Stripe:     stripeeffect.NewAPI(getenv("STRIPE_SECRET_KEY"), &stripeeffect.APIConfig{URL: *stripeURL}),
		Mail:       remediate.Mail{Endpoint: *mailURL, APIKey: getenv("MAIL_API_KEY"), From: *from},
		Credit:     remediate.Credit{Amount: *credit, Currency: *currency},
		Recipients: remediate.RecipientsQuery(pool, *recipients),
		Sweep:      &sweep.Config{Concurrency: *concurrency},
		Progress:   stdout,
	}
	if *perSecond > 0 {
		cfg.Sweep.Limiter = rate.NewLimiter(rate.Limit(*perSecond), 1)
	}
	r, err := remediate.New(cfg)
	if err != nil {
		return fail(err)
	}

	if *dryRun {
		rep, err := r.DryRun(ctx, *incident)
		if err != nil {
			return fail(err)
		}
		fmt.Fprint(stdout, rep)
		return exitOK
	}
	if err := remediate.Migrate(ctx, pool); err != nil {
		return fail(err)
	}
	rep, err := r.Run(ctx, *incident)
	fmt.Fprint(stdout, rep)
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "remediate: interrupted; run again to go on")
		return exitIncomplete
	case err != nil:
		return fail(err)
	case !rep.Complete():
		return exitIncomplete
	}
	return exitOK
}
