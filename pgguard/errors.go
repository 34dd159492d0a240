package pgguard

import (
	"errors"
	"fmt"
)

// Configuration errors. They are returned before anything is sent to the
// database.
var (
	// ErrNilDB is returned by New, Migrate and the domain-table helpers when
	// the database handle is nil (an untyped nil or a nil *pgxpool.Pool,
	// *pgx.Conn, ...).
	ErrNilDB = errors.New("pgguard: nil database handle")

	// ErrInvalidIdentifier is wrapped by every *IdentifierError: a
	// configured schema, table, column or index name that PostgreSQL would
	// not store as given.
	ErrInvalidIdentifier = errors.New("pgguard: invalid identifier")

	// ErrInvalidGuard is returned for a Guard that cannot describe a partial
	// unique index (no table, no key columns, statuses without a status
	// column, ...) and for helper calls that do not fit the guard (wrong
	// number of key values). Identifier problems in a guard are
	// *IdentifierError values, which match both this and
	// ErrInvalidIdentifier.
	ErrInvalidGuard = errors.New("pgguard: invalid guard")
)

// ErrClaimContention is returned by Store.Claim when, several times in a
// row, the key's row changed between the statement's snapshot and its
// conflict check (see the package documentation on the claim statement).
// Each retry runs after the competing transaction committed, so this needs
// a key being rewritten continuously; the call may simply be repeated.
var ErrClaimContention = errors.New("pgguard: claim kept meeting concurrent changes to the key")

// ErrNoTx is returned by a hook built with OnComplete or OnFail when it runs
// without pgguard's transaction: the effect's executor uses another store
// (idempotency.MemStore has no transaction). Nothing is recorded, and
// nothing panics.
var ErrNoTx = errors.New("pgguard: the hook ran without a pgguard ledger transaction (the executor's store is not a pgguard.Store)")

// IdentifierError reports a configured name that cannot be used as a
// PostgreSQL identifier. Names are always double-quoted in SQL, so spaces,
// quotes, upper case and reserved words are fine; what is rejected is what
// PostgreSQL would silently change or refuse:
//
//   - the empty string (for required names);
//   - a name longer than 63 bytes, which PostgreSQL would truncate
//     (NAMEDATALEN-1), or a table name so long that a name derived from it
//     (such as "<table>_active_key") would be;
//   - a NUL byte, which PostgreSQL cannot store (pgx.Identifier would drop
//     it silently);
//   - invalid UTF-8.
type IdentifierError struct {
	Field  string // which setting, e.g. "Config.Table" or "Guard.Columns[1]"
	Name   string // the rejected name, as given
	Reason string
}

func (e *IdentifierError) Error() string {
	return fmt.Sprintf("pgguard: invalid identifier %s %q: %s", e.Field, e.Name, e.Reason)
}

// Unwrap returns ErrInvalidIdentifier.
func (e *IdentifierError) Unwrap() error { return ErrInvalidIdentifier }

// Errors about the database the guard is used on, from Audit and
// CreateIndexConcurrently. They are returned after a catalog read, before
// anything else is sent.
var (
	// ErrUnknownTable is wrapped by a *CatalogError for a guard whose table
	// does not exist (or is not on the connection's search_path).
	ErrUnknownTable = errors.New("pgguard: unknown table")

	// ErrUnknownColumn is wrapped by a *CatalogError for a column named by
	// a guard or by AuditOptions that the table does not have.
	ErrUnknownColumn = errors.New("pgguard: unknown column")
)

// CatalogError reports a name the database does not have: the guard's table
// (Column empty; matches ErrUnknownTable) or one of its columns (matches
// ErrUnknownColumn).
type CatalogError struct {
	Table  string // the guard's table as given, "schema.table" when Guard.Schema is set
	Column string // the missing column, as given; "" when the table is missing
	Field  string // where the name came from, e.g. "Guard.Table", "Guard.Columns[1]" or "AuditOptions.OrderBy[0]"
}

func (e *CatalogError) Error() string {
	if e.Column == "" {
		return fmt.Sprintf("pgguard: table %q (%s) does not exist or is not on the search_path", e.Table, e.Field)
	}
	return fmt.Sprintf("pgguard: table %q has no column %q (%s)", e.Table, e.Column, e.Field)
}

// Unwrap returns ErrUnknownTable or ErrUnknownColumn.
func (e *CatalogError) Unwrap() error {
	if e.Column == "" {
		return ErrUnknownTable
	}
	return ErrUnknownColumn
}

// ErrDuplicates is wrapped by every *DuplicatesError.
var ErrDuplicates = errors.New("pgguard: active rows share a key")

// DuplicatesError is returned by CreateIndexConcurrently when the guard's
// unique index cannot be built because active rows share a key. No index of
// that name is left behind. Groups is what Audit returns with default
// options: repair them (keep Rows[0], revoke or delete the others) and call
// again.
type DuplicatesError struct {
	Index  string // Guard.IndexName
	Table  string // the guard's table as given, "schema.table" when Guard.Schema is set
	Groups []DuplicateGroup
}

func (e *DuplicatesError) Error() string {
	rows := 0
	for _, g := range e.Groups {
		rows += len(g.Rows)
	}
	msg := fmt.Sprintf("pgguard: cannot create unique index %q on %q: %d keys have more than one active row (%d rows)",
		e.Index, e.Table, len(e.Groups), rows)
	if len(e.Groups) > 0 {
		msg += fmt.Sprintf(", the first key %v", e.Groups[0].Key)
	}
	return msg
}

// Unwrap returns ErrDuplicates.
func (e *DuplicatesError) Unwrap() error { return ErrDuplicates }

// ErrInTransaction is returned by CreateIndexConcurrently when given a
// pgx.Tx, or a connection inside a transaction block: CREATE INDEX
// CONCURRENTLY cannot run inside a transaction.
var ErrInTransaction = errors.New("pgguard: CREATE INDEX CONCURRENTLY cannot run inside a transaction")

// ErrIndexDefinition is wrapped by every *IndexDefinitionError.
var ErrIndexDefinition = errors.New("pgguard: an index of that name exists with another definition")

// IndexDefinitionError is returned by CreateIndexConcurrently when the
// guard's index name is taken by a valid index whose definition is not the
// guard's (other columns, another predicate, not unique, another table) or
// by a relation that is not an index. Nothing is changed: drop or rename
// that index, or fix the guard.
type IndexDefinitionError struct {
	Index string // Guard.IndexName
	Have  string // what exists, as pg_get_indexdef shows it
	Want  string // the statement the guard's index would be built with
}

func (e *IndexDefinitionError) Error() string {
	return fmt.Sprintf("pgguard: index %q exists with another definition: have %s, want %s", e.Index, e.Have, e.Want)
}

// Unwrap returns ErrIndexDefinition.
func (e *IndexDefinitionError) Unwrap() error { return ErrIndexDefinition }

// ErrUnsupportedDB is returned by CreateIndexConcurrently for a database
// handle that is neither a *pgxpool.Pool nor a single connection
// (*pgxpool.Conn, *pgx.Conn): its statements must share one session.
var ErrUnsupportedDB = errors.New("pgguard: CreateIndexConcurrently needs a *pgxpool.Pool, *pgxpool.Conn or *pgx.Conn")
