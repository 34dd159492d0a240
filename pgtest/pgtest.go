package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultMaxConns is the size of the pools Pool and Schema return.
const DefaultMaxConns = 8

// Pool returns a pool whose connections use a fresh schema created for t
// (search_path is that schema only). The pool is closed and the schema
// dropped when t ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, _ := schemaPool(t, nil)
	return pool
}

// Schema is Pool, also returning the schema's name.
func Schema(t testing.TB) (pool *pgxpool.Pool, schema string) {
	t.Helper()
	return schemaPool(t, nil)
}

// PoolWithConfig is Pool with a chance to change the pool's configuration
// (MaxConns, AfterConnect, tracers, ...) before it is opened. The schema's
// search_path is already set in cfg.ConnConfig.RuntimeParams.
func PoolWithConfig(t testing.TB, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	pool, _ := schemaPool(t, configure)
	return pool
}

// ConnString returns a DSN whose connections use a fresh schema created for
// t, for code that must open its own connections (child processes, other
// drivers). The schema is dropped, and any backend still connected through
// the DSN terminated, when t ends.
func ConnString(t testing.TB) string {
	t.Helper()
	s := getServer(t)
	schema := createSchema(t, s)
	dsn, err := dsnWithSchema(s.dsn, schema)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dsn
}

// AdminPool returns a small pool on the test server without schema
// isolation, for things like pg_terminate_backend or looking at
// pg_namespace. It is closed when t ends.
func AdminPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	s := getServer(t)
	cfg, err := pgxpool.ParseConfig(s.dsn)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgtest-admin"
	return openPool(t, cfg)
}

func schemaPool(t testing.TB, configure func(*pgxpool.Config)) (*pgxpool.Pool, string) {
	t.Helper()
	s := getServer(t)
	schema := createSchema(t, s)

	cfg, err := pgxpool.ParseConfig(s.dsn)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg.MaxConns = DefaultMaxConns
	cfg.MinConns = 0
	// Identifiers pgtest makes need no quoting: lower-case letters, digits, _.
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.ConnConfig.RuntimeParams["application_name"] = schema
	if configure != nil {
		configure(cfg)
	}
	// Registered after createSchema's cleanup, so it runs first: the pool
	// is closed before the schema is dropped.
	return openPool(t, cfg), schema
}

// openPool opens cfg and closes it when t ends. A test that leaks an
// acquired connection would make Close wait forever; give up after a while
// and say so.
func openPool(t testing.TB, cfg *pgxpool.Config) *pgxpool.Pool {
	t.Helper()
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() {
			pool.Close()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("pgtest: pool did not close within 10s: a connection acquired by the test was never released")
		}
	})
	return pool
}

// createSchema creates a uniquely named schema and drops it when t ends.
func createSchema(t testing.TB, s *server) string {
	t.Helper()
	schema := schemaName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Connections the test opened itself (ConnString, leaked pools)
		// would hold locks on the schema's objects; they carry the schema
		// as application_name.
		if _, err := s.admin.Exec(ctx,
			"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
			schema); err != nil {
			t.Errorf("pgtest: terminate backends of schema %s: %v", schema, err)
		}
		if _, err := s.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
		}
	})
	return schema
}

// schemaName makes "t_<test name, sanitised, at most 36 bytes>_<16 hex>",
// at most 57 bytes (PostgreSQL's limit is 63).
func schemaName(testName string) string {
	var b strings.Builder
	b.WriteString("t_")
	lastUnderscore := true
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= 2+36 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			lastUnderscore = false
		} else if !lastUnderscore {
			b.WriteByte('_')
			lastUnderscore = true
		}
	}
	if !lastUnderscore {
		b.WriteByte('_')
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		panic(err)
	}
	b.WriteString(hex.EncodeToString(rnd[:]))
	return b.String()
}

// dsnWithSchema adds search_path (through the startup "options") and
// application_name to a URL or keyword/value DSN.
func dsnWithSchema(base, schema string) (string, error) {
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err != nil {
			return "", fmt.Errorf("parse DSN: %w", err)
		}
		q := u.Query()
		q.Set("options", strings.TrimSpace(q.Get("options")+" -c search_path="+schema))
		q.Set("application_name", schema)
		// Encode writes spaces as '+', which libpq does not decode.
		u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
		return u.String(), nil
	}
	return fmt.Sprintf("%s options='-c search_path=%s' application_name=%s", base, schema, schema), nil
}
