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
