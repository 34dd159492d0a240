package pgguard_test

import (
	"context"
	"io/fs"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

func readMigration(t *testing.T, name string) string {
	t.Helper()
	b, err := fs.ReadFile(pgguard.Migrations, name)
	require.NoError(t, err)
	return string(b)
}

// describeLedger returns a schema-independent description of the ledger
// objects in schema: columns, constraints, indexes and sequences.
func describeLedger(t *testing.T, pool *pgxpool.Pool, schema string) []string {
	t.Helper()
	ctx := context.Background()
	table := pgx.Identifier{schema, pgguard.DefaultTable}.Sanitize()
	var out []string
	collect := func(prefix, sql string, args ...any) {
		rows, err := pool.Query(ctx, sql, args...)
		require.NoError(t, err)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		for _, l := range lines {
			out = append(out, prefix+strings.ReplaceAll(l, schema+".", ""))
		}
	}
	collect("column ", `SELECT format('%s %s notnull=%s default=%s identity=%s', a.attname, format_type(a.atttypid, a.atttypmod),
			a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity)
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, table)
	collect("constraint ", `SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
		WHERE conrelid = $1::text::regclass ORDER BY conname`, table)
	collect("index ", `SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::text::regclass ORDER BY 1`, table)
	collect("sequence ", `SELECT c.relname || ' ' || format_type(s.seqtypid, NULL) FROM pg_class c
		JOIN pg_sequence s ON s.seqrelid = c.oid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 ORDER BY 1`, schema)
	collect("function ", `SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') ' || md5(replace(p.prosrc, '"', ''))
		FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 ORDER BY 1`, schema)
	return out
}

// migrationsEmbedded is the number of embedded migrations.
const migrationsEmbedded = 3

func migrationCount(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM effect_ledger_migrations").Scan(&n))
	return n
}

// TestMigrateMatchesEmbeddedFiles: what Migrate builds equals what the plain
// up file builds when run by hand (as goose or golang-migrate would), and the
// down file removes it all.
func TestMigrateMatchesEmbeddedFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	migrated, migratedSchema := pgtest.Schema(t)
	require.NoError(t, pgguard.Migrate(ctx, migrated, nil))

	plain, plainSchema := pgtest.Schema(t)
	for _, f := range []string{"001_effect_ledger.up.sql", "002_record_states.up.sql", "003_claim_functions.up.sql"} {
		_, err := plain.Exec(ctx, readMigration(t, f))
		require.NoError(t, err)
	}

	want := describeLedger(t, plain, plainSchema)
	require.NotEmpty(t, want)
	require.Equal(t, want, describeLedger(t, migrated, migratedSchema))
	require.Contains(t, strings.Join(want, "\n"), "effect_ledger_active_key ON effect_ledger USING btree (key) WHERE (state <> ALL (ARRAY['failed'::text, 'revoked'::text]))")

	for _, f := range []string{"003_claim_functions.down.sql", "002_record_states.down.sql", "001_effect_ledger.down.sql"} {
		_, err := plain.Exec(ctx, readMigration(t, f))
		require.NoError(t, err)
	}
	var n int
	require.NoError(t, plain.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1`, plainSchema).Scan(&n))
	require.Zero(t, n, "the down migration must leave nothing behind")
	require.NoError(t, plain.QueryRow(ctx, `SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = $1`, plainSchema).Scan(&n))
	require.Zero(t, n, "nor any function")
}

func TestMigrateTwiceChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, schema := pgtest.Schema(t)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	before := describeLedger(t, pool, schema)
	require.NoError(t, pgguard.Migrate(ctx, pool, nil))
	require.Equal(t, before, describeLedger(t, pool, schema))
	require.Equal(t, migrationsEmbedded, migrationCount(t, pool))
}

// TestMigrateConcurrently: 8 migrators on 8 connections at once, as when
// a fleet of processes starts together.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	const n = 8
	ctx := context.Background()
	pool := pgtest.PoolWithConfig(t, func(c *pgxpool.Config) { c.MaxConns = n })
	conns := make([]*pgxpool.Conn, n)
	for i := range conns {
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		conns[i] = c
	}
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Release()
			<-start
			errs[i] = pgguard.Migrate(ctx, c, nil)
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, migrationsEmbedded, migrationCount(t, pool))
	s, err := pgguard.New(pool, nil)
	require.NoError(t, err)
	_, err = s.Claim(ctx, claimReq("k"))
	require.NoError(t, err)
}

// TestMigrateAdoptsLedgerFromPlainFiles: a team that applied the plain file
// with its own tool can switch to Migrate.
func TestMigrateAdoptsLedgerFromPlainFiles(t *testing.T) {
	t.Parallel()
	for name, files := range map[string][]string{
		"Version1": {"001_effect_ledger.up.sql"},
		"Version2": {"001_effect_ledger.up.sql", "002_record_states.up.sql"},
		"Version3": {"001_effect_ledger.up.sql", "002_record_states.up.sql", "003_claim_functions.up.sql"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool, schema := pgtest.Schema(t)
			for _, f := range files {
				_, err := pool.Exec(ctx, readMigration(t, f))
				require.NoError(t, err)
			}
			require.NoError(t, pgguard.Migrate(ctx, pool, nil))
			require.Equal(t, migrationsEmbedded, migrationCount(t, pool))
			fresh, freshSchema := pgtest.Schema(t)
			require.NoError(t, pgguard.Migrate(ctx, fresh, nil))
			require.Equal(t, describeLedger(t, fresh, freshSchema), describeLedger(t, pool, schema))
		})
	}
}

func TestMigrateTxRollsBackWithCaller(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, pgguard.MigrateTx(ctx, tx, nil))
	var exists bool
	require.NoError(t, tx.QueryRow(ctx, "SELECT to_regclass('effect_ledger') IS NOT NULL").Scan(&exists))
	require.True(t, exists)
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, pool.QueryRow(ctx, "SELECT to_regclass('effect_ledger') IS NOT NULL").Scan(&exists))
	require.False(t, exists)
}

func TestMigrateNeedsExistingSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	err := pgguard.Migrate(ctx, pool, &pgguard.Config{Schema: "no such schema"})
	requirePgCode(t, err, "3F000") // invalid_schema_name
}

func TestRender(t *testing.T) {
	t.Parallel()
	up := readMigration(t, "001_effect_ledger.up.sql")
	out, err := pgguard.Render(up, &pgguard.Config{Schema: `s "1"`, Table: `it's`})
	require.NoError(t, err)
	require.Contains(t, out, `CREATE TABLE IF NOT EXISTS "s ""1"""."it's" (`)
	require.Contains(t, out, `CREATE UNIQUE INDEX IF NOT EXISTS "it's_active_key"`)
	require.Contains(t, out, `ON "s ""1"""."it's" (key)`)
	require.Contains(t, out, `CREATE SEQUENCE IF NOT EXISTS "s ""1"""."it's_token_seq"`)
	require.Contains(t, out, `CONSTRAINT "it's_result_check"`)
	require.Contains(t, out, "-- pgguard ledger, version 1.", "comments are copied as they are")
	require.Contains(t, out, "'pending', 'applied'", "string literals are copied as they are")
	for _, line := range strings.Split(out, "\n") {
		if code, _, _ := strings.Cut(line, "--"); strings.Contains(code, "effect_ledger") {
			t.Fatalf("an object name was not rewritten: %s", line)
		}
	}

	for _, bad := range []string{
		"CREATE INDEX effect_ledger_other ON effect_ledger (key)",
		"SELECT 'unterminated",
		"SELECT $1",
		"DO $body$ BEGIN PERFORM 1; END $body$",
		"/* open",
	} {
		_, err := pgguard.Render(bad, nil)
		require.Error(t, err, bad)
	}
	out, err = pgguard.Render("SELECT 'effect_ledger', \"effect_ledger\" -- effect_ledger\nFROM effect_ledger /* effect_ledger */", nil)
	require.NoError(t, err)
	require.Equal(t, "SELECT 'effect_ledger', \"effect_ledger\" -- effect_ledger\nFROM \"effect_ledger\" /* effect_ledger */", out)
	out, err = pgguard.Render("DO $$ BEGIN PERFORM status FROM effect_ledger LIMIT 0; END $$;", &pgguard.Config{Table: "it's"})
	require.NoError(t, err)
	require.Equal(t, `DO $$ BEGIN PERFORM status FROM "it's" LIMIT 0; END $$;`, out, "a DO block's names are renamed too")
}
