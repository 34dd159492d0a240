// Package pgguard is where the exactly-once guarantee lives when the
// database is PostgreSQL: a partial unique index over the active rows
// decides, under any concurrency, which worker may act.
//
// It holds four things:
//
//   - Store, the ledger behind idempotency.Executor: an idempotency.Store
//     (Claim, Transition, Lookup) and an idempotency.Operator (ListStuck,
//     Settle, Revoke, History), plus RefusalLookup, CountStuck and Prune.
//     It passes idempotency/storetest in every pgx query execution mode, the
//     simple protocol (PgBouncer) included. Hooks that write the caller's
//     domain row in the ledger's transaction get a pgx.Tx through TxFrom,
//     or are written with the typed adapters OnComplete and OnFail.
//   - Migrate and MigrateTx, which create or upgrade the ledger from the
//     embedded plain SQL files (Migrations), safe to run at every start-up
//     and from many processes at once; teams with their own migration tool
//     copy the files instead.
//   - A toolkit for teams' own domain tables guarded by a partial unique
//     index (Guard): InsertOnce and InsertOnceRow (a unique violation on the
//     guard's index means "already there", inside a transaction too),
//     Exists and ExistingKeys (pre-flight checks, one query per batch),
//     FetchActive, IsUniqueViolation, Guard.IndexDDL and
//     Guard.OnConflictDoNothing.
//   - Tools to clean up a table that already holds duplicates before its
//     index can exist: Audit (the groups the index would reject, oldest
//     first, in one query) and CreateIndexConcurrently (builds the index
//     online, rebuilds an invalid one, refuses with the duplicates).
//
// # The flow of one effect
//
//	db, _ := pgxpool.New(ctx, dsn)
//	_ = pgguard.Migrate(ctx, db, nil)       // once, at start-up
//	store, _ := pgguard.New(db, nil)
//	exec, _ := idempotency.NewExecutor(store, nil)
//	res, err := idempotency.Run(ctx, exec, effect, input)
//
// Each Run goes through these steps:
//
//  1. Claim (1 statement) inserts a record under the key, or meets the
//     active record already there and decides by idempotency.Decide: done
//     (the stored result comes back and the provider is not called), in
//     flight elsewhere, not due, in doubt, or acquired (a takeover, or a
//     reconciliation for an effect with Find).
//  2. The provider is called with the key as its Idempotency-Key.
//  3. A Transition (1 statement) completes the record and stores the result
//     and the attempts' evidence, only if the claim's fencing token still
//     matches and the record is in a state completion may start from. With
//     an OnComplete hook, the hook's statements run in the same transaction.
//  4. A failed attempt is recorded the same way, by what the provider may
//     have done: released (it did not act), unknown (retry under the same
//     key), failed (refused, which frees the key) or in doubt.
//
// Round trips, counted with a pgx.QueryTracer in this package's tests: a
// first-time effect costs 2 statements (claim, complete), a repeat 1 (the
// claim returns the stored result), Lookup of any number of keys 1. A hook
// adds BEGIN and COMMIT around its own statements; ExpiredRetryUncalled
// effects add the mark-calling transition's 1.
//
// # The ledger table
//
// One row per claim lifecycle: key, namespace, state (one of
// idempotency.States; docs/state-machine.md draws them), the previous
// state, payload fingerprint, result (bytea), fencing token, claims, the
// provider-key generation, lease_until, due_at, dedup_until (when the
// provider may forget the key, stored by the claim that starts it),
// evidence (jsonb, the last ten attempts), reason and times. The partial
// unique index <table>_active_key on (key) WHERE state NOT IN ('failed',
// 'revoked') allows at most one active record per key; failed and revoked
// records are exempt, so a key can be earned again. Fencing tokens come
// from a sequence: every claim, first or takeover, gets a value no earlier
// claim had, so a worker whose lease expired cannot change a record that
// was taken over. A CHECK constraint makes an applied row without a result
// impossible, whoever writes it. Version 1 ledgers are upgraded in place by
// migration 002, every row keeping its meaning.
//
// # The claim statement
//
// Claim is one statement. It looks the key's active record up through the
// active-key index and decides on it with <table>_decide, the claim rule
// (idempotency.Decide) written once in SQL by migration 003 and inlined
// into the plan:
//
//	SELECT CASE WHEN cur.verdict NOT IN ('acquired', 'reconcile')
//	            THEN <the record as it is, with its verdict>
//	            ELSE <table>_claim(<the request>) END
//	FROM (SELECT <now>) AS clock
//	LEFT JOIN LATERAL (SELECT <the active row>, <table>_decide(...) AS verdict ...) AS cur ON true
//
// When the record is one the request may not acquire (finished, held under
// a live lease, not due, another payload, in doubt), that lookup is the
// answer: a repeat writes nothing and takes no row lock, so repeats leave no
// dead tuples, no WAL, and never queue behind each other. Only a missing
// key, or a record the request may acquire, reaches <table>_claim, which
// runs the claim-or-fetch:
//
//	WITH cur AS (SELECT <the active row>, <table>_decide(...) AS verdict ...),
//	ins AS (INSERT ... SELECT ... WHERE NOT EXISTS (SELECT FROM cur WHERE verdict does not acquire)
//	        ON CONFLICT (key) WHERE state NOT IN ('failed', 'revoked')
//	        DO UPDATE SET state = <the state the verdict moves it to>, token = <next>, claims = claims + 1, ...
//	        WHERE <table>_decide(<the locked latest row version>) acquires
//	        RETURNING ...)
//	SELECT ..., <acquired or reconcile> FROM ins
//	UNION ALL SELECT ..., verdict FROM cur WHERE NOT EXISTS (SELECT FROM ins)
//
// The INSERT arbitrates through the unique index; on a conflict, DO UPDATE
// locks the latest committed version of the row and decides again there, so
// two workers can never both take over one claim. Its WHERE turns "not
// acquired" into a no-op instead of an update. ClaimMany (BatchStore) does
// the same for a whole batch in one statement over unnest arrays, with keys
// sorted so that overlapping batches lock rows in one order.
//
// The alternatives weighed:
//
//   - INSERT ... ON CONFLICT DO NOTHING RETURNING returns no row on a
//     conflict, so a second SELECT is needed, and under READ COMMITTED the
//     conflicting row may have committed after that statement's snapshot:
//     the caller sees neither its insert nor the row that beat it.
//   - ON CONFLICT DO UPDATE with a no-op SET and no WHERE, telling "already
//     there" from xmax <> 0 (River's unique-job insert does this). It always
//     returns the row, but writes a new row version on every repeat: a dead
//     tuple and WAL per duplicate delivery, on the hottest path.
//
// This statement keeps the repeat path read-only and handles the snapshot
// race explicitly: when the conflicting row committed after the snapshot,
// the statement returns no row, or returns the snapshot's version of a row
// whose verdict acquired although the takeover did not happen. Claim then re-runs
// it (a new statement has a new snapshot, and the competing transaction has
// committed by the time a conflict is reported), at most 5 times in all,
// then returns ErrClaimContention. The tests provoke this race with
// transactions committing first claims, takeovers, completions and
// failures under a dozen blocked claimers.
//
// # Time
//
// Leases, due times and dedup deadlines are computed in SQL from one "now"
// per statement: the database's clock_timestamp() by default, which every
// process shares, or Config.Now sent as a parameter (tests use a fake
// clock).
//
// # Transactions
//
// Store, Migrate and the toolkit take a DBTX: a *pgxpool.Pool, a connection
// or a pgx.Tx. With a pool, every statement commits on its own. With a
// pgx.Tx (Store.WithDB, MigrateTx), everything joins the caller's
// transaction: a claim becomes visible, and blocks competing claims of the
// same key, only when it commits; Complete's hook transaction and
// InsertOnce's protection become savepoints, so a failure inside them
// leaves the caller's transaction usable. The store expects READ COMMITTED,
// PostgreSQL's default; under REPEATABLE READ a concurrent claim of the same
// key surfaces as a serialization failure (SQLSTATE 40001).
//
// # Cancellation and faults
//
// Every method returns an error when its context is cancelled, its
// statement times out, or its connection dies, and the ledger is left with
// no record or with a held record whose lease expires as usual: never an
// applied record without a result, never a lost one. (The executor calls
// the store on a context the caller cannot cancel, so this concerns direct
// callers.) With pgx's default context handling, cancelling a context
// closes the connection without telling the server, so a statement waiting
// for a lock (a claim blocked by a concurrent one) may still complete after
// the caller got its error: that is a claim nobody holds, and it expires
// under its lease.
// Configure pgconn.CancelRequestContextWatcherHandler on the pool to have
// the server cancel the statement instead. Errors wrap the context's error
// when the context is done, whichever way pgx reports the cancellation.
//
// # Names
//
// Configured schema, table, column and index names are identifiers: they
// are always double-quoted with pgx.Identifier (so spaces, quotes, upper
// case and reserved words work and mean exactly what they say) and never
// pasted into SQL. Names PostgreSQL would change or refuse (empty, longer
// than 63 bytes, with a NUL byte, invalid UTF-8) are an *IdentifierError.
// Status values in a Guard are string literals, quoted and escaped. Every
// statement uses explicit casts and no session state, so it runs in every
// pgx query execution mode, behind PgBouncer in transaction mode too.
package pgguard
