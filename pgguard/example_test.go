package pgguard_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
)

// The ledger behind the executor: one claim and one completion the first
// time, one statement and no provider call on every repeat.
func Example() {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := pgguard.Migrate(ctx, db, nil); err != nil { // safe at every start-up
		log.Fatal(err)
	}
	store, err := pgguard.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	exec, err := idempotency.NewExecutor(store, nil)
	if err != nil {
		log.Fatal(err)
	}

	type grant struct{ UserID, SubscriptionID string }
	keys := idempotency.KeySpace{Namespace: "loyalty.promo"}
	promo := &idempotency.Effect[grant, string]{
		Name: "loyalty.promo",
		Key: func(g grant) (idempotency.Key, error) {
			return keys.Key(idempotency.Str("user", g.UserID), idempotency.Str("sub", g.SubscriptionID))
		},
		Call: func(ctx context.Context, key idempotency.Key, g grant) (string, error) {
			// Create the promotion code with key.String() as Idempotency-Key.
			return "promo_123", nil
		},
		// Record the domain row in the same transaction as the completion:
		// the adapter hands the hook the ledger's pgx.Tx.
		OnComplete: pgguard.OnComplete(func(ctx context.Context, tx pgx.Tx, g grant, code string) error {
			_, err := tx.Exec(ctx,
				`INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, $2, 'applied')`, g.UserID, code)
			return err
		}),
	}
	for range 2 { // an overlapping second tick
		res, err := idempotency.Run(ctx, exec, promo, grant{UserID: "u_42", SubscriptionID: "sub_9"})
		fmt.Println(res.Outcome, res.Value, err)
	}
}

// The seed's shorter pattern on a team's own table: pre-flight, call the
// provider, then insert, with a unique violation on the guard's index
// meaning "already processed".
func ExampleInsertOnce() {
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

	// Pre-flight a whole batch of candidates in one query.
	candidates := []int64{1, 2, 3}
	done, err := pgguard.ExistingKeys(ctx, db, guard, candidates)
	if err != nil {
		log.Fatal(err)
	}
	for _, userID := range candidates {
		if done[userID] {
			continue // never spend provider quota on finished work
		}
		code := "promo_for_" + fmt.Sprint(userID) // the provider call, keyed by business identity
		res, err := pgguard.InsertOnce(ctx, db, guard,
			`INSERT INTO loyalty_discounts (user_id, promo_code, status) VALUES ($1, $2, 'applied')`, userID, code)
		if err != nil {
			log.Fatal(err) // a real error, including a unique violation on another index
		}
		fmt.Println(userID, res.Inserted) // false: another worker got there first
	}
}

func ExampleGuard_IndexDDL() {
	guard := pgguard.Guard{
		Table:          "loyalty_discounts",
		Columns:        []string{"user_id"},
		StatusColumn:   "status",
		ActiveStatuses: []string{"applied", "skipped"},
		IndexName:      "uq_loyalty_discounts_active",
	}
	ddl, err := guard.IndexDDL()
	fmt.Println(ddl, err)
	clause, err := guard.OnConflictDoNothing()
	fmt.Println(clause, err)
	// Output:
	// CREATE UNIQUE INDEX IF NOT EXISTS "uq_loyalty_discounts_active" ON "loyalty_discounts" ("user_id") WHERE "status" IN ('applied', 'skipped') <nil>
	// ON CONFLICT ("user_id") WHERE "status" IN ('applied', 'skipped') DO NOTHING <nil>
}
