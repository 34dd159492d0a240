package pgtest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/pgtest"
)

// The tests below re-run this test binary as a subprocess with helperEnv set,
// to see what a package's tests do under a given configuration. Such a
// subprocess runs only TestHelper, with the code configuration the other two
// variables give.
const (
	helperEnv         = "PGTEST_HELPER"               // "1": this process is a helper
	helperDSNEnv      = "PGTEST_HELPER_CODE_DSN"      // its Config.DatabaseURL
	helperRequiredEnv = "PGTEST_HELPER_CODE_REQUIRED" // "1": its Config.Required
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		pgtest.MainWithConfig(m, &pgtest.Config{
			DatabaseURL: os.Getenv(helperDSNEnv),
			Required:    os.Getenv(helperRequiredEnv) == "1",
		})
		return
	}
	pgtest.Main(m)
}

func schemaExists(t *testing.T, admin *pgxpool.Pool, schema string) bool {
	t.Helper()
	var n int
	err := admin.QueryRow(context.Background(),
		"SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema).Scan(&n)
	if err != nil {
		t.Fatalf("query pg_namespace: %v", err)
	}
	return n == 1
}

func TestPoolUsesOwnSchema(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t)

	var current string
	if err := pool.QueryRow(ctx, "SELECT current_schema()").Scan(&current); err != nil {
		t.Fatal(err)
	}
	if current != schema {
		t.Fatalf("current_schema() = %q, want %q", current, schema)
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE widgets (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	var nsp string
	err := pool.QueryRow(ctx,
		"SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = 'widgets'::regclass").Scan(&nsp)
	if err != nil {
		t.Fatal(err)
	}
	if nsp != schema {
		t.Fatalf("unqualified table landed in %q, want %q", nsp, schema)
	}
	if got := pool.Config().MaxConns; got != pgtest.DefaultMaxConns {
		t.Fatalf("MaxConns = %d, want %d", got, pgtest.DefaultMaxConns)
	}
}

// Two schemas that exist at the same time do not see each other's tables.
func TestSchemasAreIsolated(t *testing.T) {
	ctx := context.Background()
	a, sa := pgtest.Schema(t)
	b, sb := pgtest.Schema(t)
	if sa == sb {
		t.Fatalf("two schemas share the name %q", sa)
	}
	for _, q := range []string{
		"CREATE TABLE items (v text)",
		"INSERT INTO items VALUES ('a')",
		"CREATE TABLE only_a (v int)",
	} {
		if _, err := a.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{
		"CREATE TABLE items (v text)", // same name: no conflict
		"INSERT INTO items VALUES ('b')",
	} {
		if _, err := b.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for name, p := range map[string]*pgxpool.Pool{"a": a, "b": b} {
		var vals []string
		rows, err := p.Query(ctx, "SELECT v FROM items")
		if err != nil {
			t.Fatal(err)
		}
		vals, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if len(vals) != 1 || vals[0] != name {
			t.Errorf("schema %s sees items %v, want [%s]", name, vals, name)
		}
	}
	var reg *string
	if err := b.QueryRow(ctx, "SELECT to_regclass('only_a')::text").Scan(&reg); err != nil {
		t.Fatal(err)
	}
	if reg != nil {
		t.Errorf("schema b sees a's table only_a as %s", *reg)
	}
}

// The same, with parallel tests that hold their schemas at the same time.
func TestParallelSchemasAreIsolated(t *testing.T) {
	var created sync.WaitGroup
	created.Add(2)
	allCreated := make(chan struct{})
	go func() { created.Wait(); close(allCreated) }()

	for _, name := range []string{"a", "b"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.Pool(t)
			if _, err := pool.Exec(ctx, "CREATE TABLE items (v text)"); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, "INSERT INTO items VALUES ($1)", name); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, "CREATE TABLE only_"+name+" (v int)"); err != nil {
				t.Fatal(err)
			}
			created.Done()
			select {
			case <-allCreated:
			case <-time.After(30 * time.Second):
				t.Fatal("the other parallel subtest never created its table (-parallel < 2?)")
			}
			other := map[string]string{"a": "b", "b": "a"}[name]
			var reg *string
			if err := pool.QueryRow(ctx, "SELECT to_regclass('only_"+other+"')::text").Scan(&reg); err != nil {
				t.Fatal(err)
			}
			if reg != nil {
				t.Errorf("%s sees %s's table as %s", name, other, *reg)
			}
			_, err := pool.Exec(ctx, "SELECT count(*) FROM only_"+other)
			if !isUndefinedTable(err) {
				t.Errorf("%s queried %s's table only_%s: err = %v, want undefined_table (42P01)", name, other, other, err)
			}
			rows, err := pool.Query(ctx, "SELECT v FROM items")
			if err != nil {
				t.Fatal(err)
			}
			vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			if len(vals) != 1 || vals[0] != name {
				t.Errorf("%s sees items %v, want [%s]", name, vals, name)
			}
		})
	}
}

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable
}

// search_path holds the test's schema only: a table in public is not
// reachable by its bare name, so a test that forgot a migration fails
// instead of using someone else's table.
func TestSearchPathExcludesPublic(t *testing.T) {
	ctx := context.Background()
	admin := pgtest.AdminPool(t)
	pool, schema := pgtest.Schema(t)

	table := "pgtest_public_" + strings.TrimPrefix(schema, "t_")
	qualified := pgx.Identifier{"public", table}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE TABLE "+qualified+" (v int)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP TABLE "+qualified); err != nil {
			t.Errorf("drop %s: %v", qualified, err)
		}
	})

	var sp string
	if err := pool.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil {
		t.Fatal(err)
	}
	if sp != schema {
		t.Errorf("search_path = %q, want %q", sp, schema)
	}
	if _, err := pool.Exec(ctx, "SELECT count(*) FROM "+table); !isUndefinedTable(err) {
		t.Errorf("bare name of a table in public: err = %v, want undefined_table (42P01)", err)
	}
	// The table is there: qualified, the same pool reaches it.
	if _, err := pool.Exec(ctx, "SELECT count(*) FROM "+qualified); err != nil {
		t.Errorf("qualified name: %v", err)
	}
}

// A schema is dropped when its test ends, also when the test leaves a
// connection of its own open.
func TestSchemaDroppedWhenTestEnds(t *testing.T) {
	admin := pgtest.AdminPool(t)
	ctx := context.Background()

	var poolSchema string
	var leaked *pgx.Conn
	var dsnSchema string
	t.Run("inner", func(t *testing.T) {
		var pool *pgxpool.Pool
		pool, poolSchema = pgtest.Schema(t)
		if _, err := pool.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
			t.Fatal(err)
		}
		if !schemaExists(t, admin, poolSchema) {
			t.Fatalf("schema %s missing while its test runs", poolSchema)
		}

		conn, err := pgx.Connect(ctx, pgtest.ConnString(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, "SELECT current_schema()").Scan(&dsnSchema); err != nil {
			t.Fatal(err)
		}
		if dsnSchema == "" || dsnSchema == poolSchema || !strings.HasPrefix(dsnSchema, "t_") {
			t.Fatalf("ConnString schema = %q", dsnSchema)
		}
		// Hold a lock in the schema and never close the connection.
		if _, err := conn.Exec(ctx, "CREATE TABLE held (id int)"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
		leaked = conn
	})
	if leaked != nil {
		defer leaked.Close(ctx)
	}
	for _, s := range []string{poolSchema, dsnSchema} {
		if s != "" && schemaExists(t, admin, s) {
			t.Errorf("schema %s still exists after its test ended", s)
		}
	}
}

func TestAdminPoolAndConfig(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) { c.MaxConns = 2 })
	if got := pool.Config().MaxConns; got != 2 {
		t.Fatalf("MaxConns = %d, want 2", got)
	}
	admin := pgtest.AdminPool(t)
	var sp string
	if err := admin.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(sp, "t_") {
		t.Fatalf("admin pool has a test schema on its search_path: %q", sp)
	}
	// The admin pool can see, and end, a test pool's backend.
	var pid uint32
	if err := pool.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	var ok bool
	if err := admin.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend: %v %v", ok, err)
	}
}

// TestHelper is what a package's test does: ask for a pool and use it. It
// runs only in a subprocess started by runHelper.
func TestHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("run in a subprocess by the configuration tests")
	}
	pool := pgtest.Pool(t)
	var schema string
	if err := pool.QueryRow(context.Background(), "SELECT current_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	t.Logf("helper: on schema %s", schema)
}

// runHelper runs TestHelper in a subprocess of this test binary, with the
// given environment on top of this one's minus pgtest's own variables. The
// subprocess sees no Docker engine, so it never starts a container. It
// returns the output and whether the subprocess passed.
func runHelper(t *testing.T, env ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelper$", "-test.v", "-test.count=1")
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case pgtest.EnvDatabaseURL, pgtest.EnvRequired, pgtest.EnvReport, "DOCKER_HOST",
			helperEnv, helperDSNEnv, helperRequiredEnv:
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, helperEnv+"=1", "DOCKER_HOST=unix:///nonexistent/pgtest/docker.sock")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("run helper: %v", err)
	}
	return string(out), err == nil
}

// With neither TEST_DATABASE_URL nor a Docker engine, a test is skipped
// with one clear line; with TEST_DATABASE_REQUIRED=1 it fails instead.
func TestSkipWithoutServer(t *testing.T) {
	start := time.Now()
	out, ok := runHelper(t)
	if !ok {
		t.Fatalf("without a server the helper should pass (skip):\n%s", out)
	}
	if !strings.Contains(out, pgtest.SkipMessage) || !strings.Contains(out, "--- SKIP: TestHelper") {
		t.Fatalf("output lacks the skip line:\n%s", out)
	}
	if strings.Count(out, "TEST_DATABASE_URL") != 1 {
		t.Errorf("want the skip reason on one line, got:\n%s", out)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("detecting that there is no server took %s", d)
	}

	out, ok = runHelper(t, pgtest.EnvRequired+"=1")
	if ok {
		t.Fatalf("with %s=1 the helper should fail:\n%s", pgtest.EnvRequired, out)
	}
	for _, want := range []string{pgtest.SkipMessage, "required by TEST_DATABASE_REQUIRED=1", "--- FAIL: TestHelper"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// Config.Required turns the skip into a failure as the variable does, and
// TEST_DATABASE_REQUIRED=0 does not switch it off.
func TestRequiredInCodeFailsWithoutServer(t *testing.T) {
	out, ok := runHelper(t, helperRequiredEnv+"=1", pgtest.EnvRequired+"=0")
	if ok {
		t.Fatalf("with Config.Required the helper should fail:\n%s", out)
	}
	for _, want := range []string{pgtest.SkipMessage, "required by pgtest.Config.Required", "--- FAIL: TestHelper"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// Config.DatabaseURL is used when TEST_DATABASE_URL is not set, and
// TEST_DATABASE_URL wins when both are.
func TestDatabaseURLPrecedence(t *testing.T) {
	// The server this binary uses, whichever way it came; the subprocesses
	// get it as a DSN. Port 1 on loopback refuses at once.
	good := pgtest.AdminPool(t).Config().ConnString()
	const bad = "postgres://pgtest@127.0.0.1:1/none?sslmode=disable&connect_timeout=5"

	for _, tc := range []struct {
		name, code, env string
		pass            bool
		want            string
	}{
		{"code only", good, "", true, "pgtest: using pgtest.Config.DatabaseURL"},
		{"environment wins over a broken code value", bad, good, true, "pgtest: using TEST_DATABASE_URL"},
		{"environment wins even when broken", good, bad, false, "TEST_DATABASE_URL is set but unusable"},
		{"a broken code value fails, it does not skip", bad, "", false, "pgtest.Config.DatabaseURL is set but unusable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := []string{helperDSNEnv + "=" + tc.code}
			if tc.env != "" {
				env = append(env, pgtest.EnvDatabaseURL+"="+tc.env)
			}
			out, ok := runHelper(t, env...)
			if ok != tc.pass || !strings.Contains(out, tc.want) {
				t.Fatalf("passed = %v, want %v, with %q in the output:\n%s", ok, tc.pass, tc.want, out)
			}
			if tc.pass && !strings.Contains(out, "helper: on schema t_") {
				t.Fatalf("the helper did not get a schema of its own:\n%s", out)
			}
		})
	}
}

// The test shown in Example (example_test.go), run.
func TestExampleWelcomeEmailOnce(t *testing.T) { testWelcomeEmailOnce(t) }
