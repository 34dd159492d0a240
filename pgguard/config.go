package pgguard

import (
	"context"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DBTX is what pgguard needs from a database handle. *pgxpool.Pool,
// *pgxpool.Conn, *pgx.Conn and pgx.Tx all satisfy it.
//
// With a pool or a connection outside a transaction, every statement
// commits on its own and Begin opens a transaction. With a pgx.Tx, every
// statement joins the caller's transaction (nothing is durable until the
// caller commits) and Begin opens a savepoint, so a failure inside pgguard
// rolls back to that savepoint and leaves the caller's transaction usable.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// DefaultTable is the ledger table's name when Config.Table is empty.
const DefaultTable = "effect_ledger"

// Config configures the ledger Store and Migrate. A nil *Config means all
// defaults. Store and Migrate must be given the same Schema and Table.
type Config struct {
	// Schema holds the ledger table. Empty (the default) leaves the table
	// unqualified, so the connection's search_path decides. Migrate does not
	// create the schema.
	Schema string

	// Table is the ledger table's name. Empty means DefaultTable
	// ("effect_ledger"). The table's sequence, indexes and constraints are
	// named after it ("<table>_token_seq", "<table>_active_key", ...), and
	// Migrate records its versions in "<table>_migrations", so a table name
	// is at most 50 bytes.
	//
	// Schema and Table are used exactly as given (case and all): they are
	// always double-quoted in SQL, never pasted in. A name that cannot be
	// an identifier is an *IdentifierError.
	Table string

	// Now returns the current time for leases, dedup windows and
	// timestamps. Nil (the default) means the database clock
	// (clock_timestamp(), read once per statement), which every process
	// shares. When set, the time is sent as a statement parameter: tests
	// use it to expire leases with a fake clock instead of sleeping.
	Now func() time.Time
}

// Name suffixes of the objects derived from the table's name.
const (
	sufTokenSeq    = "_token_seq"
	sufActiveKey   = "_active_key"
	sufStuck       = "_stuck"
	sufStatusCheck = "_status_check"
	sufResultCheck = "_result_check"
	sufStateCheck  = "_state_check"
	sufExempt      = "_exempt"
	sufFinished    = "_finished"
	sufMigrations  = "_migrations"
	sufClaimFn     = "_claim"            // the claim function (migration 003)
	sufDecideFn    = "_decide"           // the claim rule, Decide in SQL (migration 003)
	sufClaimedType = "_claimed"          // what the claim function returns (migration 003)
	maxSuffixLen   = len(sufStatusCheck) // the longest of the above
	maxTableLen    = maxIdentLen - maxSuffixLen
)

// names holds the configuration's identifiers, validated and quoted.
type names struct {
	table      string // quoted, schema-qualified when a schema is set
	migrations string // quoted, qualified
	seqLiteral string // the token sequence as a string literal, for nextval
	claimFn    string // the claim function, quoted, qualified
	decideFn   string // the claim rule's function, quoted, qualified
	claimed    string // the claim function's result type, quoted, qualified
	lockKey    int64  // advisory lock key for Migrate
	// rename maps each default name in the migration files to its rendering.
	rename map[string]string
	now    func() time.Time
}

func (c *Config) resolve() (*names, error) {
	var cfg Config
	if c != nil {
		cfg = *c
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.Schema != "" {
		if err := checkIdent("Config.Schema", cfg.Schema); err != nil {
			return nil, err
		}
	}
	if err := checkIdent("Config.Table", cfg.Table); err != nil {
		return nil, err
	}
	if len(cfg.Table) > maxTableLen {
		return nil, &IdentifierError{Field: "Config.Table", Name: cfg.Table,
			Reason: "longer than 50 bytes (derived names such as <table>_status_check would exceed 63 bytes)"}
	}
	qualified := func(name string) string {
		if cfg.Schema == "" {
			return pgx.Identifier{name}.Sanitize()
		}
		return pgx.Identifier{cfg.Schema, name}.Sanitize()
	}
	local := func(name string) string { return pgx.Identifier{name}.Sanitize() }

	n := &names{
		table:      qualified(cfg.Table),
		migrations: qualified(cfg.Table + sufMigrations),
		seqLiteral: quoteLiteral(qualified(cfg.Table + sufTokenSeq)),
		claimFn:    qualified(cfg.Table + sufClaimFn),
		decideFn:   qualified(cfg.Table + sufDecideFn),
		claimed:    qualified(cfg.Table + sufClaimedType),
		now:        cfg.Now,
		rename: map[string]string{
			DefaultTable:                  qualified(cfg.Table),
			DefaultTable + sufTokenSeq:    qualified(cfg.Table + sufTokenSeq),
			DefaultTable + sufActiveKey:   local(cfg.Table + sufActiveKey),
			DefaultTable + sufStuck:       local(cfg.Table + sufStuck),
			DefaultTable + sufStatusCheck: local(cfg.Table + sufStatusCheck),
			DefaultTable + sufResultCheck: local(cfg.Table + sufResultCheck),
			DefaultTable + sufStateCheck:  local(cfg.Table + sufStateCheck),
			DefaultTable + sufExempt:      local(cfg.Table + sufExempt),
			DefaultTable + sufFinished:    local(cfg.Table + sufFinished),
			DefaultTable + sufClaimFn:     qualified(cfg.Table + sufClaimFn),
			DefaultTable + sufDecideFn:    qualified(cfg.Table + sufDecideFn),
			DefaultTable + sufClaimedType: qualified(cfg.Table + sufClaimedType),
		},
	}
	h := fnv.New64a()
	h.Write([]byte("pgguard.migrate\x00" + cfg.Schema + "\x00" + cfg.Table))
	n.lockKey = int64(h.Sum64())
	return n, nil
}

// clock returns the statement parameter for "now": the configured clock's
// time, or nil so that the SQL falls back to clock_timestamp().
func (n *names) clock() any {
	if n.now == nil {
		return nil
	}
	return n.now()
}
