package remediate_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/examples/applyloyalty"
	"github.com/effectonce/effectonce/examples/applyloyalty/remediate"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/stripeeffect"
)

// Look, clean up, run again until complete, then build the index.
func Example() {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// snippet:remediation-sweep-new
	r, err := remediate.New(remediate.Config{
		DB:     db,
		Stripe: stripeeffect.NewAPI(os.Getenv("STRIPE_SECRET_KEY"), nil),
		Mail: remediate.Mail{
			Endpoint: "https://mail.example.com/v1/emails", // deduplicates by Idempotency-Key
			APIKey:   os.Getenv("MAIL_API_KEY"),
			From:     "care@example.com",
		},
		Credit:     remediate.Credit{Amount: 2900, Currency: "usd"}, // one month of Pro
		Recipients: remediate.RecipientsQuery(db, `SELECT id, email FROM users WHERE id = ANY($1)`),
		Progress:   os.Stdout, // a line per batch of each step
	})
	if err != nil {
		log.Fatal(err)
	}
	// end snippet
	// snippet:remediation-sweep-run
	const incident = "INC-2025-07-LOYALTY-DUP" // an input, never the clock

	// 1. What would change, and what it would cost. Nothing is kept.
	plan, err := r.DryRun(ctx, incident)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(plan)

	// 2. The plan table and the ledger, then the sweep. Safe to run again
	// after any crash: each step is an effect under a business key.
	if err := remediate.Migrate(ctx, db); err != nil {
		log.Fatal(err)
	}
	rep, err := r.Run(ctx, incident)
	fmt.Print(rep)
	if err != nil || !rep.Complete() {
		log.Fatal("not complete: run again (a killed run's claims wait for their 5-minute lease)")
	}

	// 3. No duplicates left: build the guard's index on the live table.
	_, err = pgguard.CreateIndexConcurrently(ctx, db, applyloyalty.Guard)
	var dup *pgguard.DuplicatesError
	if errors.As(err, &dup) {
		log.Fatalf("%d keys gained duplicates since: run the sweep again", len(dup.Groups))
	}
	if err != nil {
		log.Fatal(err)
	}
	// end snippet
}
