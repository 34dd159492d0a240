package pgguard

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations holds the ledger's SQL migrations as plain files,
// "NNN_name.up.sql" and "NNN_name.down.sql", written for the default table
// name (effect_ledger, unqualified). Teams that run goose, golang-migrate or
// their own tool copy them from here (or from the pgguard/migrations
// directory); Migrate applies the same files, renamed for its Config.
var Migrations fs.FS = mustSub(migrationFiles, "migrations")

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

type migration struct {
	version  int
	name     string // e.g. "001_effect_ledger"
	up, down string
}

// migrations are the embedded migrations in version order. A malformed file
// set is a programming error caught by every test run.
var migrations = mustLoadMigrations()

func mustLoadMigrations() []migration {
	entries, err := fs.ReadDir(Migrations, ".")
	if err != nil {
		panic(err)
	}
	byVersion := map[int]*migration{}
	for _, e := range entries {
		base, dir, ok := strings.Cut(e.Name(), ".")
		if !ok || (dir != "up.sql" && dir != "down.sql") {
			panic("pgguard: unexpected migration file " + e.Name())
		}
		num, _, _ := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v <= 0 {
			panic("pgguard: migration file without a version: " + e.Name())
		}
		body, err := fs.ReadFile(Migrations, path.Join(".", e.Name()))
		if err != nil {
			panic(err)
		}
		m := byVersion[v]
		if m == nil {
			m = &migration{version: v, name: base}
			byVersion[v] = m
		}
		if dir == "up.sql" {
			m.up = string(body)
		} else {
			m.down = string(body)
		}
	}
	var out []migration
	for _, m := range byVersion {
		if m.up == "" || m.down == "" {
			panic("pgguard: migration " + m.name + " lacks its up or down file")
		}
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	return out
}

// Migrate creates or upgrades the ledger table described by cfg (nil: the
// defaults) in one transaction: a pool or connection gets its own
// transaction, a pgx.Tx gets a savepoint (prefer MigrateTx then).
//
// It is safe to run at every start-up, twice, and from many processes at
// once: it takes a transaction-scoped advisory lock derived from the schema
// and table names, records applied versions in "<table>_migrations", and
// every migration is idempotent DDL (CREATE ... IF NOT EXISTS), so a ledger
// created earlier from the plain files is adopted, not recreated. The
// schema must already exist. The names in the embedded files are rewritten
// to the configured ones, always quoted; nothing from cfg is pasted into
// SQL unquoted.
func Migrate(ctx context.Context, db DBTX, cfg *Config) error {
	if isNil(db) {
		return ErrNilDB
	}
	n, err := cfg.resolve()
	if err != nil {
		return err
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgguard: migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := migrate(ctx, tx, n); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgguard: migrate: commit: %w", err)
	}
	return nil
}

// MigrateTx is Migrate inside the caller's transaction, which must be READ
// COMMITTED (the default) for concurrent migrators to see each other's
// work. The advisory lock is held until that transaction ends. Nothing is
// durable until the caller commits.
func MigrateTx(ctx context.Context, tx pgx.Tx, cfg *Config) error {
	if isNil(tx) {
		return ErrNilDB
	}
	n, err := cfg.resolve()
	if err != nil {
		return err
	}
	return migrate(ctx, tx, n)
}

func migrate(ctx context.Context, tx pgx.Tx, n *names) error {
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1::bigint)", n.lockKey); err != nil {
		return fmt.Errorf("pgguard: migrate: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+n.migrations+` (
	version    integer     PRIMARY KEY,
	name       text        NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
		return fmt.Errorf("pgguard: migrate: create version table: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT version FROM `+n.migrations)
	if err != nil {
		return fmt.Errorf("pgguard: migrate: read versions: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("pgguard: migrate: read versions: %w", err)
	}
	if len(done) == 0 {
		// A ledger created from the plain files by another tool: record
		// the versions it already has instead of applying them again.
		have, err := ledgerVersion(ctx, tx, n)
		if err != nil {
			return err
		}
		for _, m := range migrations {
			if m.version > have {
				break
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+n.migrations+` (version, name) VALUES ($1::integer, $2::text)`,
				int32(m.version), m.name); err != nil {
				return fmt.Errorf("pgguard: migrate: adopt %s: %w", m.name, err)
			}
			done = append(done, int32(m.version))
		}
	}
	for _, m := range migrations {
		if slices.Contains(done, int32(m.version)) {
			continue
		}
		sql, err := render(m.up, n)
		if err != nil {
			return fmt.Errorf("pgguard: migrate: %s: %w", m.name, err)
		}
		// No arguments: pgx sends it as one simple-protocol query, so the
		// file may hold several statements.
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("pgguard: migrate: %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+n.migrations+` (version, name) VALUES ($1::integer, $2::text)`,
			int32(m.version), m.name); err != nil {
			return fmt.Errorf("pgguard: migrate: record %s: %w", m.name, err)
		}
	}
	return nil
}

// ledgerVersion tells which migration built the ledger table when no
// version is recorded: 0 when there is no table, 1 for the version-1 shape
// (a status column), 2 for the version-2 shape (a state column).
func ledgerVersion(ctx context.Context, tx pgx.Tx, n *names) (int, error) {
	var exists, hasState bool
	err := tx.QueryRow(ctx, `SELECT to_regclass($1::text) IS NOT NULL,
		EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass($1::text) AND attname = 'state' AND NOT attisdropped)`,
		n.table).Scan(&exists, &hasState)
	switch {
	case err != nil:
		return 0, fmt.Errorf("pgguard: migrate: inspect the ledger: %w", err)
	case !exists:
		return 0, nil
	case hasState:
		return 2, nil
	}
	return 1, nil
}

// render rewrites the default object names in a migration file (bare
// identifiers such as effect_ledger or effect_ledger_active_key) to the
// configured, quoted ones. Comments, string literals and quoted identifiers
// are copied untouched; the body of an untagged dollar quote ($$ ... $$,
// a DO block) is scanned like the rest. A bare identifier that starts with the default
// table name but is not a known object is an error, so a new migration
// cannot introduce a name Migrate would leave unrenamed.
func render(sql string, n *names) (string, error) {
	var b strings.Builder
	b.Grow(len(sql) + 256)
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '-' && strings.HasPrefix(sql[i:], "--"):
			end := strings.IndexByte(sql[i:], '\n')
			if end < 0 {
				end = len(sql) - i
			}
			b.WriteString(sql[i : i+end])
			i += end
		case c == '/' && strings.HasPrefix(sql[i:], "/*"):
			end := strings.Index(sql[i+2:], "*/")
			if end < 0 {
				return "", fmt.Errorf("unterminated comment")
			}
			b.WriteString(sql[i : i+2+end+2])
			i += 2 + end + 2
		case c == '\'' || c == '"':
			j := i + 1
			for {
				k := strings.IndexByte(sql[j:], c)
				if k < 0 {
					return "", fmt.Errorf("unterminated quote")
				}
				j += k + 1
				if j < len(sql) && sql[j] == c { // doubled quote
					j++
					continue
				}
				break
			}
			b.WriteString(sql[i:j])
			i = j
		case c == '$' && strings.HasPrefix(sql[i:], "$$"):
			// An untagged dollar-quoted body (a DO block) is SQL too:
			// it is copied and scanned like the rest, so the names in it
			// are renamed as well.
			b.WriteString("$$")
			i += 2
		case c == '$':
			return "", fmt.Errorf("tagged dollar quoting and parameters are not supported in migrations")
		case isIdentStart(c):
			j := i + 1
			for j < len(sql) && isIdentPart(sql[j]) {
				j++
			}
			word := sql[i:j]
			if to, ok := n.rename[strings.ToLower(word)]; ok {
				b.WriteString(to)
			} else if strings.HasPrefix(strings.ToLower(word), DefaultTable) {
				return "", fmt.Errorf("unknown ledger object name %s", word)
			} else {
				b.WriteString(word)
			}
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), nil
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80
}

func isIdentPart(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') || c == '$' }
