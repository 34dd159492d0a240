package pgguard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effectonce/effectonce/idempotency"
)

// Store is the PostgreSQL ledger: an idempotency.Store over one table
// created by Migrate. It is safe for concurrent use by many goroutines and
// many processes; the table's partial unique index, not the Go code, is
// what keeps one active record per key.
//
// Round trips: Claim, Complete (without a hook), Release, Fail, Settle,
// Revoke, Lookup and ListStuck are one statement each. Complete with a hook
// adds BEGIN and COMMIT (SAVEPOINT and RELEASE inside a caller's
// transaction) around the hook's own statements.
type Store struct {
	db DBTX
	n  *names
	q  *queries

	// claimRetries counts claim statements re-run because the key's row
	// changed after the statement's snapshot (for tests).
	claimRetries atomic.Int64
}

var _ idempotency.Store = (*Store)(nil)

// New returns a Store over db, which may be a pool, a connection or a
// transaction (see DBTX). cfg may be nil. It validates the configuration and
// builds every SQL statement once; it does not touch the database, so the
// table must already exist (see Migrate). A nil db is ErrNilDB; a bad schema
// or table name is an *IdentifierError.
func New(db DBTX, cfg *Config) (*Store, error) {
	if isNil(db) {
		return nil, ErrNilDB
	}
	n, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	return &Store{db: db, n: n, q: buildQueries(n)}, nil
}

// WithDB returns a Store with the same configuration and prepared SQL that
// runs on db instead, typically the caller's pgx.Tx: its claims and
// completions then commit or roll back with that transaction.
func (s *Store) WithDB(db DBTX) (*Store, error) {
	if isNil(db) {
		return nil, ErrNilDB
	}
	return &Store{db: db, n: s.n, q: s.q}, nil
}

// maxClaimTries bounds the claim statement's re-runs (see Claim).
const maxClaimTries = 5

// activeStatuses is the partial unique index's predicate. The claim's
// ON CONFLICT clause must repeat it exactly, or PostgreSQL cannot infer the
// arbiter index (SQLSTATE 42P10).
const activeStatuses = `status IN ('pending', 'applied', 'skipped')`

// recordCols are the columns scanned into an idempotency.Record, in order.
const recordCols = `key, namespace, status, fingerprint, result, token, attempts, lease_until, parked, call_started, reason, first_claimed_at, updated_at`

// nowParam renders "now" for a statement: the clock parameter when the
// configuration has a clock, the database's clock_timestamp() otherwise.
func nowParam(p string) string {
	return "coalesce(" + p + "::timestamptz, clock_timestamp())"
}

type queries struct {
	claim, complete, markCalling, release, fail, settle, revoke, lookup, listStuck string
}

// takeOver renders the takeover rule for the row alias r at time now: a
// pending, unparked record with the same fingerprint, first claimed within
// the request's window, that was released or whose lease expired while the
// request allows takeover (and, with OnlyUncalled, whose call never
// started). Parameters:
// $3 fingerprint, $5 takeover, $6 window in microseconds, $8 only uncalled.
func takeOver(r, now string) string {
	return strings.NewReplacer("r.", r+".", "NOW", now).Replace(
		`r.status = 'pending' AND NOT r.parked
		AND r.fingerprint IS NOT DISTINCT FROM $3::bytea
		AND ($6::bigint <= 0 OR r.first_claimed_at > NOW - $6::bigint * interval '1 microsecond')
		AND (r.lease_until IS NULL
			OR (r.lease_until <= NOW AND $5::boolean AND NOT ($8::boolean AND r.call_started)))`)
}

func buildQueries(n *names) *queries {
	t := n.table
	q := &queries{}

	// Claim or fetch in one statement. Parameters: $1 key, $2 namespace,
	// $3 fingerprint, $4 lease (µs), $5 takeover, $6 window (µs), $7 now,
	// $8 only uncalled.
	//
	//  - clock: "now", read once (MATERIALIZED: clock_timestamp() is
	//    volatile and every branch must agree on it).
	//  - cur: the active row as the statement's snapshot sees it, and
	//    whether the takeover rule frees it.
	//  - ins: runs only when there is no row or the row looks free, so a
	//    repeat of a finished or live key writes and locks nothing. On a
	//    conflict, DO UPDATE re-checks the takeover rule on the latest
	//    committed version of the row (which it locks); the WHERE makes a
	//    non-takeover a no-op that leaves no dead tuple. The token comes
	//    from the sequence once per attempt and is reused by the takeover,
	//    which also clears call_started.
	//  - the result: the inserted or taken-over row (acquired), else the
	//    snapshot's row. No row, or a snapshot row that looked free although
	//    ins did not take it, means the row changed after the snapshot: the
	//    caller re-runs the statement (see Claim).
	q.claim = `WITH clock AS MATERIALIZED (
	SELECT ` + nowParam("$7") + ` AS now
), cur AS (
	SELECT l.key, l.namespace, l.status, l.fingerprint, l.result, l.token, l.attempts, l.lease_until,
		l.parked, l.call_started, l.reason, l.first_claimed_at, l.updated_at,
		` + takeOver("l", "clock.now") + ` AS free,
		l.status = 'pending' AND (l.parked OR l.lease_until IS NULL OR l.lease_until <= clock.now) AS stuck
	FROM ` + t + ` AS l, clock
	WHERE l.key = $1::text AND l.` + activeStatuses + `
), ins AS (
	INSERT INTO ` + t + ` AS l (key, namespace, status, fingerprint, token, attempts, lease_until, parked, first_claimed_at, updated_at)
	SELECT $1::text, $2::text, 'pending', $3::bytea, nextval(` + n.seqLiteral + `), 1,
		clock.now + $4::bigint * interval '1 microsecond', false, clock.now, clock.now
	FROM clock
	WHERE NOT EXISTS (SELECT FROM cur WHERE NOT cur.free)
	ON CONFLICT (key) WHERE ` + activeStatuses + `
	DO UPDATE SET token = EXCLUDED.token, attempts = l.attempts + 1, lease_until = EXCLUDED.lease_until,
		parked = false, call_started = false, updated_at = EXCLUDED.updated_at
	WHERE ` + takeOver("l", "EXCLUDED.updated_at") + `
	RETURNING ` + recordCols + `
)
SELECT ` + recordCols + `, true AS acquired, false AS stuck, false AS free FROM ins
UNION ALL
SELECT ` + recordCols + `, false, stuck, free FROM cur WHERE NOT EXISTS (SELECT FROM ins)`

	// The fenced updates: only the holder of the current token of a pending
	// record changes it.
	held := ` WHERE key = $1::text AND token = $2::bigint AND status = 'pending'`

	q.complete = `UPDATE ` + t + ` SET status = $3::text, result = $4::bytea, lease_until = NULL, parked = false,
	reason = NULL, updated_at = ` + nowParam("$5") + held + `
RETURNING ` + recordCols

	q.release = `UPDATE ` + t + ` SET lease_until = NULL, parked = $3::boolean,
	call_started = call_started AND $3::boolean, reason = NULLIF($4::text, ''),
	updated_at = ` + nowParam("$5") + held

	q.markCalling = `UPDATE ` + t + ` SET call_started = true, updated_at = ` + nowParam("$3") + held

	q.fail = `UPDATE ` + t + ` SET status = 'failed', result = NULL, lease_until = NULL, parked = false,
	reason = NULLIF($3::text, ''), updated_at = ` + nowParam("$4") + held + `
RETURNING ` + recordCols

	q.settle = `UPDATE ` + t + ` SET status = $3::text, result = $4::bytea, lease_until = NULL, parked = false,
	reason = NULLIF($5::text, ''), updated_at = ` + nowParam("$6") + held + `
RETURNING ` + recordCols

	q.revoke = `UPDATE ` + t + ` SET status = 'revoked', reason = NULLIF($2::text, ''), updated_at = ` + nowParam("$3") + `
WHERE key = $1::text AND status IN ('applied', 'skipped')
RETURNING ` + recordCols

	q.lookup = `SELECT ` + recordCols + ` FROM ` + t + `
WHERE key = ANY($1::text[]) AND ` + activeStatuses

	// ListStuck: parked or expired claims, and with a window ($4, µs)
	// released claims first made at least that long ago.
	q.listStuck = `WITH clock AS MATERIALIZED (SELECT ` + nowParam("$1") + ` AS now)
SELECT ` + recordCols + ` FROM ` + t + `, clock
WHERE status = 'pending'
	AND (parked OR lease_until <= clock.now
		OR ($4::bigint > 0 AND lease_until IS NULL
			AND first_claimed_at <= clock.now - $4::bigint * interval '1 microsecond'))
	AND ($2::text = '' OR namespace = $2::text)
ORDER BY first_claimed_at, id
LIMIT $3::bigint`
	return q
}

// scanRecord scans recordCols plus extra destinations.
func scanRecord(row pgx.Row, extra ...any) (idempotency.Record, error) {
	var (
		r      idempotency.Record
		status string
		lease  *time.Time
		reason *string
	)
	dest := append([]any{&r.Key, &r.Namespace, &status, &r.Fingerprint, &r.Result, &r.Token, &r.Attempts,
		&lease, &r.Parked, &r.CallStarted, &reason, &r.FirstClaimedAt, &r.UpdatedAt}, extra...)
	if err := row.Scan(dest...); err != nil {
		return idempotency.Record{}, err
	}
	r.Status = idempotency.Status(status)
	if lease != nil {
		r.LeaseUntil = *lease
	}
	if reason != nil {
		r.Reason = *reason
	}
	return r, nil
}

func micros(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(max(1, (d+time.Microsecond-1)/time.Microsecond))
}

// Claim implements idempotency.Store in one statement (see the package
// documentation for its SQL and why it has that shape).
//
// Under READ COMMITTED, the row that blocked the insert can have been
// committed after the statement's snapshot, so the statement sees the
// conflict but not the row. Claim then re-runs the statement, which takes
// a fresh snapshot, up to 5 times in all (ErrClaimContention after that).
// The re-run is immediate: the competing transaction has committed by the
// time the conflict is reported. Inside a caller's REPEATABLE READ or
// SERIALIZABLE transaction, PostgreSQL reports such a row as a
// serialization failure (SQLSTATE 40001) instead, which is returned.
//
// Inside a caller's transaction, an acquired claim is visible to others
// only when that transaction commits, and a competing Claim of the same key
// waits for it.
func (s *Store) Claim(ctx context.Context, req idempotency.ClaimRequest) (idempotency.Claim, error) {
	if req.Key == "" || req.Lease <= 0 {
		return idempotency.Claim{}, fmt.Errorf("pgguard: claim %s: needs a key and a positive lease", req.Namespace)
	}
	fp := req.Fingerprint
	if len(fp) == 0 {
		fp = nil // no fingerprint is NULL, whether nil or empty
	}
	for try := 1; ; try++ {
		var c idempotency.Claim
		var free bool
		rec, err := scanRecord(s.db.QueryRow(ctx, s.q.claim,
			req.Key, req.Namespace, fp, micros(req.Lease), req.TakeOver, micros(req.Window), s.n.clock(), req.OnlyUncalled),
			&c.Acquired, &c.Stuck, &free)
		switch {
		case err == nil && !free:
			c.Record = rec
			return c, nil
		case err != nil && !errors.Is(err, pgx.ErrNoRows):
			return idempotency.Claim{}, wrapErr(ctx, "claim "+req.Namespace, err)
		}
		// No row, or a stale one: the key's row changed after our snapshot.
		if try == maxClaimTries {
			return idempotency.Claim{}, fmt.Errorf("pgguard: claim %s: %w", req.Namespace, ErrClaimContention)
		}
		s.claimRetries.Add(1)
		if err := ctx.Err(); err != nil {
			return idempotency.Claim{}, fmt.Errorf("pgguard: claim %s: %w", req.Namespace, err)
		}
	}
}

// Complete implements idempotency.Store. Without a hook it is one UPDATE
// fenced by the token. With a hook it opens a transaction (a savepoint when
// the Store runs on a pgx.Tx), runs the same UPDATE, calls the hook with
// that pgx.Tx, and commits; if the hook fails, everything is rolled back,
// the claim stays pending and held, and the hook's error is returned
// wrapped. An applied record must carry a result: a nil Result with
// StatusApplied is refused before anything is written (the table's CHECK
// constraint refuses it too).
func (s *Store) Complete(ctx context.Context, req idempotency.CompleteRequest) (idempotency.Record, error) {
	switch {
	case req.Status != idempotency.StatusApplied && req.Status != idempotency.StatusSkipped:
		return idempotency.Record{}, fmt.Errorf("pgguard: complete: status %q is not applied or skipped", req.Status)
	case req.Status == idempotency.StatusApplied && req.Result == nil:
		return idempotency.Record{}, errors.New("pgguard: complete: an applied record needs a result")
	}
	if req.Hook == nil {
		return s.fenced(ctx, s.db, "complete", s.q.complete, req.Key, req.Token, string(req.Status), req.Result, s.n.clock())
	}

	return s.inTx(ctx, "complete", req.Hook, func(tx pgx.Tx) (idempotency.Record, error) {
		return s.fenced(ctx, tx, "complete", s.q.complete, req.Key, req.Token, string(req.Status), req.Result, s.n.clock())
	})
}

// fenced runs a token-fenced UPDATE ... RETURNING; no row is ErrClaimLost.
func (s *Store) fenced(ctx context.Context, db DBTX, op, sql string, args ...any) (idempotency.Record, error) {
	rec, err := scanRecord(db.QueryRow(ctx, sql, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return idempotency.Record{}, idempotency.ErrClaimLost
	}
	if err != nil {
		return idempotency.Record{}, wrapErr(ctx, op, err)
	}
	return rec, nil
}

// MarkCalling implements idempotency.Store: one UPDATE fenced by the token.
func (s *Store) MarkCalling(ctx context.Context, key string, token int64) error {
	return s.exec(ctx, "mark calling", s.q.markCalling, key, token, s.n.clock())
}

// exec runs a token-fenced UPDATE without RETURNING; no row is ErrClaimLost.
func (s *Store) exec(ctx context.Context, op, sql string, args ...any) error {
	tag, err := s.db.Exec(ctx, sql, args...)
	if err != nil {
		return wrapErr(ctx, op, err)
	}
	if tag.RowsAffected() == 0 {
		return idempotency.ErrClaimLost
	}
	return nil
}

// Release implements idempotency.Store: one UPDATE fenced by the token.
// Releasing without Park clears CallStarted.
func (s *Store) Release(ctx context.Context, req idempotency.ReleaseRequest) error {
	return s.exec(ctx, "release", s.q.release, req.Key, req.Token, req.Park, req.Reason, s.n.clock())
}

// Fail implements idempotency.Store: one UPDATE fenced by the token.
func (s *Store) Fail(ctx context.Context, req idempotency.FailRequest) (idempotency.Record, error) {
	if req.Hook == nil {
		return s.fenced(ctx, s.db, "fail", s.q.fail, req.Key, req.Token, req.Reason, s.n.clock())
	}
	return s.inTx(ctx, "fail", req.Hook, func(tx pgx.Tx) (idempotency.Record, error) {
		return s.fenced(ctx, tx, "fail", s.q.fail, req.Key, req.Token, req.Reason, s.n.clock())
	})
}

// inTx runs update and then hook in one transaction (a savepoint when the
// store's handle is itself a transaction), and commits only if both
// succeed.
func (s *Store) inTx(ctx context.Context, op string, hook func(context.Context, any) error, update func(pgx.Tx) (idempotency.Record, error)) (idempotency.Record, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return idempotency.Record{}, wrapErr(ctx, op+": begin", err)
	}
	// Rolling back after a failure must not depend on the caller's context.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rec, err := update(tx)
	if err != nil {
		return idempotency.Record{}, err
	}
	if err := hook(ctx, tx); err != nil {
		return idempotency.Record{}, fmt.Errorf("pgguard: %s hook: %w", op, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return idempotency.Record{}, wrapErr(ctx, op+": commit", err)
	}
	return rec, nil
}

// Settle implements idempotency.Store: one UPDATE fenced by the token. As
// with Complete, settling as applied needs a result.
func (s *Store) Settle(ctx context.Context, req idempotency.SettleRequest) (idempotency.Record, error) {
	switch req.Status {
	case idempotency.StatusApplied, idempotency.StatusSkipped, idempotency.StatusFailed:
	default:
		return idempotency.Record{}, fmt.Errorf("pgguard: settle: status %q is not applied, skipped or failed", req.Status)
	}
	if req.Status == idempotency.StatusApplied && req.Result == nil {
		return idempotency.Record{}, errors.New("pgguard: settle: an applied record needs a result")
	}
	return s.fenced(ctx, s.db, "settle", s.q.settle, req.Key, req.Token, string(req.Status), req.Result, req.Reason, s.n.clock())
}

// Revoke implements idempotency.Store: one UPDATE of the applied or skipped
// record; the stored result is kept for the audit trail.
func (s *Store) Revoke(ctx context.Context, key string, reason string) (idempotency.Record, error) {
	rec, err := scanRecord(s.db.QueryRow(ctx, s.q.revoke, key, reason, s.n.clock()))
	if errors.Is(err, pgx.ErrNoRows) {
		return idempotency.Record{}, idempotency.ErrNotFound
	}
	if err != nil {
		return idempotency.Record{}, wrapErr(ctx, "revoke", err)
	}
	return rec, nil
}

// Lookup implements idempotency.Store with one query (key = ANY($1)),
// whatever the number of keys; no keys, no query.
func (s *Store) Lookup(ctx context.Context, keys []string) (map[string]idempotency.Record, error) {
	if len(keys) == 0 {
		return map[string]idempotency.Record{}, nil
	}
	rows, err := s.db.Query(ctx, s.q.lookup, keys)
	if err != nil {
		return nil, wrapErr(ctx, "lookup", err)
	}
	defer rows.Close()
	out := make(map[string]idempotency.Record, len(keys))
	for rows.Next() {
		rec, err := scanRecord(rows)
		if err != nil {
			return nil, wrapErr(ctx, "lookup", err)
		}
		out[rec.Key] = rec
	}
	if err := rows.Err(); err != nil {
		return nil, wrapErr(ctx, "lookup", err)
	}
	return out, nil
}

// ListStuck implements idempotency.Store with one query: pending records
// that are parked or whose lease has expired, oldest first claim first.
func (s *Store) ListStuck(ctx context.Context, req idempotency.ListStuckRequest) ([]idempotency.Record, error) {
	limit := req.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.db.Query(ctx, s.q.listStuck, s.n.clock(), req.Namespace, int64(limit), micros(req.Window))
	if err != nil {
		return nil, wrapErr(ctx, "list stuck", err)
	}
	recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (idempotency.Record, error) { return scanRecord(row) })
	if err != nil {
		return nil, wrapErr(ctx, "list stuck", err)
	}
	return recs, nil
}

// wrapErr adds context to a database error. When the caller's context is
// done, its error is wrapped too: depending on the pool's context handler,
// pgx reports a cancellation as the context's error or as the server's
// "canceling statement" (SQLSTATE 57014), and errors.Is(err,
// context.Canceled) should hold either way.
func wrapErr(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("pgguard: %s: %w: %w", op, ctxErr, err)
	}
	return fmt.Errorf("pgguard: %s: %w", op, err)
}
