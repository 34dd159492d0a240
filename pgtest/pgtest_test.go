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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

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

// helperEnv makes TestHelperNoServer do its work; it runs only as a
// subprocess of TestSkipWithoutServer.
const helperEnv = "PGTEST_HELPER_NO_SERVER"

func TestHelperNoServer(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper for TestSkipWithoutServer")
	}
	pgtest.Pool(t)
	t.Log("unreachable: got a pool")
}

// With neither TEST_DATABASE_URL nor a Docker engine, a test is skipped
// with one clear line; with TEST_DATABASE_REQUIRED=1 it fails instead.
func TestSkipWithoutServer(t *testing.T) {
	run := func(required bool) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperNoServer$", "-test.v", "-test.count=1")
		var env []string
		for _, kv := range os.Environ() {
			k, _, _ := strings.Cut(kv, "=")
			switch k {
			case pgtest.EnvDatabaseURL, pgtest.EnvRequired, "DOCKER_HOST", pgtest.EnvReport:
				continue
			}
			env = append(env, kv)
		}
		env = append(env, helperEnv+"=1", "DOCKER_HOST=unix:///nonexistent/pgtest/docker.sock")
		if required {
			env = append(env, pgtest.EnvRequired+"=1")
		}
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	start := time.Now()
	out, err := run(false)
	if err != nil {
		t.Fatalf("without a server the helper should pass (skip): %v\n%s", err, out)
	}
	if !strings.Contains(out, pgtest.SkipMessage) || !strings.Contains(out, "--- SKIP: TestHelperNoServer") {
		t.Fatalf("output lacks the skip line:\n%s", out)
	}
	if strings.Count(out, "TEST_DATABASE_URL") != 1 {
		t.Errorf("want the skip reason on one line, got:\n%s", out)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("detecting that there is no server took %s", d)
	}

	out, err = run(true)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
		t.Fatalf("with %s=1 the helper should fail, got err=%v\n%s", pgtest.EnvRequired, err, out)
	}
	if !strings.Contains(out, pgtest.SkipMessage) || !strings.Contains(out, "--- FAIL: TestHelperNoServer") {
		t.Fatalf("output lacks the failure line:\n%s", out)
	}
}
