package pgtest_test

import (
	"context"
	"testing"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

// testWelcomeEmailOnce is a test in your package (name it TestWelcomeEmailOnce).
// It migrates pgguard's ledger into the test's own schema and checks that an
// effect delivered twice calls its provider once.
func testWelcomeEmailOnce(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t) // search_path: a new schema, dropped when t ends

	if err := pgguard.Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	ledger, err := pgguard.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	exec, err := idempotency.NewExecutor(ledger, nil)
	if err != nil {
		t.Fatal(err)
	}

	keys := idempotency.KeySpace{Namespace: "mail.welcome"}
	sent := 0
	welcome := &idempotency.Effect[string, string]{
		Name: "mail.welcome",
		Key: func(userID string) (idempotency.Key, error) {
			return keys.Key(idempotency.Str("user", userID))
		},
		Call: func(ctx context.Context, key idempotency.Key, userID string) (string, error) {
			sent++ // your provider call, with key.String() as its Idempotency-Key
			return "msg_" + userID, nil
		},
	}

	for _, want := range []idempotency.Outcome{idempotency.OutcomeApplied, idempotency.OutcomeAlreadyApplied} {
		res, err := idempotency.Run(ctx, exec, welcome, "u_42")
		if err != nil || res.Outcome != want {
			t.Fatalf("Run = %v, %v; want %v", res.Outcome, err, want)
		}
	}
	if sent != 1 {
		t.Fatalf("provider called %d times, want 1", sent)
	}
}

// A package's PostgreSQL tests, with pgguard's ledger on a schema of the
// test's own. The package's TestMain hands the test binary to pgtest, so
// that a container started for it is stopped when its tests are done:
//
//	func TestMain(m *testing.M) {
//		pgtest.MainWithConfig(m, &pgtest.Config{
//			// CI fails without a server; a laptop without one skips.
//			Required: os.Getenv("CI") != "",
//		})
//	}
//
// or, with no settings in code, func TestMain(m *testing.M) { pgtest.Main(m) }.
// Each test then asks for its own pool, as testWelcomeEmailOnce does.
//
// This example needs a server and an example cannot skip, so it is compiled
// but not run; this package's TestExampleWelcomeEmailOnce runs its test.
func Example() {}
