package pgguard_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/pgguard"
)

// Before the guard's index can exist, find the keys with more than one
// active row, keep the oldest row of each and revoke the others.
func ExampleAudit() {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	guard := pgguard.Guard{
		Table:          "loyalty_discounts",
		Columns:        []string{"user_id"},
		StatusColumn:   "status",
		ActiveStatuses: []string{"applied", "skipped"},
		IndexName:      "uq_loyalty_discounts_active",
	}

	groups, err := pgguard.Audit(ctx, db, guard, &pgguard.AuditOptions{
		OrderBy: []string{"created_at", "id"}, // oldest first
		Columns: []string{"id", "promo_code", "created_at"},
	})
	if err != nil {
		log.Fatal(err) // *pgguard.CatalogError if the guard names what the table lacks
	}
	for _, g := range groups {
		keep, others := g.Rows[0], g.Rows[1:]
		fmt.Printf("user %v: keep %v, revoke %d\n", g.Key[0], keep["promo_code"], len(others))
		for _, r := range others {
			// The row only: the promotion code it stands for still exists
			// at the provider, and needs its own repair.
			if _, err := db.Exec(ctx, `UPDATE loyalty_discounts SET status = 'revoked'
				WHERE id = $1 AND status IN ('applied', 'skipped')`, r["id"]); err != nil {
				log.Fatal(err)
			}
		}
	}
}

// Then build the index on the live table, at every deploy: it does nothing
// once the index is there, drops an invalid one left by a failed build, and
// refuses while duplicates remain.
func ExampleCreateIndexConcurrently() {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	guard := pgguard.Guard{
		Table:          "loyalty_discounts",
		Columns:        []string{"user_id"},
		StatusColumn:   "status",
		ActiveStatuses: []string{"applied", "skipped"},
		IndexName:      "uq_loyalty_discounts_active",
	}

	res, err := pgguard.CreateIndexConcurrently(ctx, db, guard) // a pool, never a pgx.Tx
	var dup *pgguard.DuplicatesError
	switch {
	case errors.As(err, &dup):
		// New duplicates since the repair (writers were running): no index
		// was left behind; repair dup.Groups and run again.
		fmt.Println(len(dup.Groups), "keys still have more than one active row")
	case err != nil:
		log.Fatal(err) // ErrIndexDefinition: another index holds the name
	default:
		fmt.Println("created:", res.Created, "dropped an invalid one:", res.DroppedInvalid)
	}
}
