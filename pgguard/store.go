package pgguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/effectonce/effectonce/idempotency"
)

// Store is the PostgreSQL ledger: an idempotency.Store and
// idempotency.Operator over one table created by Migrate. It is safe for
// concurrent use by many goroutines and many processes; the table's partial
// unique index, not the Go code, is what keeps one active record per key.
//
// Round trips: Claim, Transition (without a hook), Lookup, Settle, Revoke,
// History and ListStuck are one statement each. A change with a hook adds
// BEGIN and COMMIT (SAVEPOINT and RELEASE inside a caller's transaction)
// around the hook's own statements; Recover, rare, is a short transaction.
type Store struct {
	db DBTX
	n  *names
	q  *queries

	// claimRetries counts claim statements re-run because the key's row
	// changed after the statement's snapshot (for tests).
	claimRetries atomic.Int64
}

var (
	_ idempotency.Store         = (*Store)(nil)
	_ idempotency.Operator      = (*Store)(nil)
	_ idempotency.RefusalLookup = (*Store)(nil)
)

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

// activePredicate is the partial unique index's predicate. The claim's
// ON CONFLICT clause must repeat it exactly, or PostgreSQL cannot infer the
// arbiter index (SQLSTATE 42P10).
const activePredicate = `state NOT IN ('failed', 'revoked')`

// recordCols are the columns scanned into an idempotency.Record, in order.
const recordCols = `key, namespace, state, prev_state, fingerprint, result, token, claims, generation, lease_until, due_at, dedup_until, evidence, reason, first_claimed_at, updated_at`

// nowParam renders "now" for a statement: the clock parameter when the
// configuration has a clock, the database's clock_timestamp() otherwise.
func nowParam(p string) string {
	return "coalesce(" + p + "::timestamptz, clock_timestamp())"
}

// micro renders a duration parameter given in microseconds as an interval.
func micro(p string) string { return "(" + p + "::bigint * interval '1 microsecond')" }

type queries struct {
	claim, transition, settleWhy, revoke, lookup, lastRefusals, listStuck, history, recoverRead, recoverUpdate, recoverInsert string
	// batch holds the statements of ClaimMany and TransitionMany (batch.go).
	batch *batchQueries
}

// decide renders a call of the claim rule (idempotency.Decide in SQL, the
// function migration 003 creates) for the row alias r, the request's
// fingerprint, lease (µs), takeover, window (µs) and reconcile expressions,
// at now. PostgreSQL inlines the function into the statement's plan.
func decide(n *names, r, fp, lease, takeover, window, reconcile, now string) string {
	return n.decideFn + `(` + r + `.state, ` + r + `.fingerprint, ` + r + `.lease_until, ` + r + `.due_at, ` + r + `.dedup_until, ` +
		r + `.first_claimed_at, ` + fp + `, ` + lease + `, ` + takeover + `, ` + window + `, ` + reconcile + `, ` + now + `)`
}

// stuckPredicate is idempotency.Stuck in SQL, at clock.now; its first line
// matches the stuck index's predicate.
const stuckPredicate = `state IN ('claimed', 'calling', 'reconciling', 'unknown', 'in_doubt')
	AND (state = 'in_doubt'
		OR (state IN ('claimed', 'calling', 'reconciling') AND lease_until <= clock.now)
		OR (state = 'unknown' AND dedup_until <= clock.now))`

// evidenceTrim keeps the last idempotency.MaxEvidence entries of a jsonb
// array (a lax jsonpath: a shorter array is kept whole).
var evidenceTrim = `'$[last-` + strconv.Itoa(idempotency.MaxEvidence-1) + ` to last]'`

func buildQueries(n *names) *queries {
	t := n.table
	q := &queries{batch: buildBatchQueries(n)}

	// Claim or fetch in one statement. Parameters: $1 key, $2 namespace,
	// $3 fingerprint, $4 lease (µs), $5 takeover, $6 window (µs), $7 now,
	// $8 track, $9 reconcile.
	//
	//  - clock: "now", read once (clock_timestamp() is volatile and every
	//    part must agree on it).
	//  - cur: the key's active record and its verdict (the claim rule of
	//    migration 003, inlined): one index lookup.
	//  - a record the request may not acquire (finished, held under a live
	//    lease, not due, another payload, in doubt) is the answer as it is:
	//    nothing is written or locked, and the claim function is never
	//    called (CASE evaluates only the branch it takes).
	//  - otherwise the claim function of migration 003 runs the version-2
	//    claim-or-fetch statement (INSERT ... ON CONFLICT in a CTE) and
	//    returns the record it inserted or took over, or the one it met;
	//    nothing, or a stale record, when the row changed after that
	//    statement's snapshot: the caller runs this statement again (see
	//    Claim).
	q.claim = `SELECT ` + prefixed("(c.r)", recordCols) + `, (c.r).verdict, (c.r).stale FROM (
	SELECT CASE WHEN cur.verdict NOT IN ('acquired', 'reconcile')
		THEN ROW(` + prefixed("cur", recordCols) + `, cur.verdict, false)::` + n.claimed + `
		ELSE ` + n.claimFn + `($1::text, $2::text, $3::bytea, $4::bigint, $5::boolean, $6::bigint, $7::timestamptz,
			$8::boolean, $9::boolean, ` + n.seqLiteral + `::regclass) END AS r
	FROM (SELECT ` + nowParam("$7") + ` AS now) AS clock
	LEFT JOIN LATERAL (
		SELECT ` + prefixed("l", recordCols) + `, ` + decide(n, "l", "$3::bytea", "$4::bigint", "$5::boolean", "$6::bigint", "$9::boolean", "clock.now") + ` AS verdict
		FROM ` + t + ` AS l
		WHERE l.key = $1::text AND l.` + activePredicate + `
	) AS cur ON true
) AS c
WHERE (c.r).key IS NOT NULL`

	// The fenced change: only the holder of the current token, in a state
	// the change may start from, changes the record. Parameters: $1 key,
	// $2 token, $3 target state (NULL keeps it), $4 source states, $5
	// result, $6 reason, $7 evidence (jsonb), $8 lease (µs, 0 keeps it),
	// $9 due in (µs), $10 the attempt ended, $11 a new generation, $12 its
	// window (µs), $13 now, $14 a live claim may be changed (holders: yes;
	// an operator without Force: no).
	q.transition = `WITH clock AS MATERIALIZED (SELECT ` + nowParam("$13") + ` AS now)
UPDATE ` + t + ` AS l SET
	prev_state = l.state,
	state = coalesce($3::text, l.state),
	result = CASE WHEN $3::text IN ('applied', 'skipped') THEN coalesce($5::bytea, '\x'::bytea)
		WHEN $3::text = 'failed' THEN NULL ELSE l.result END,
	lease_until = CASE
		WHEN coalesce($3::text, l.state) IN ('claimed', 'calling', 'reconciling') THEN
			CASE WHEN $8::bigint > 0 THEN clock.now + ` + micro("$8") + ` ELSE l.lease_until END
		WHEN $3::text IN ('unknown', 'in_doubt') THEN CASE WHEN $10::boolean THEN NULL ELSE l.lease_until END
		ELSE NULL END,
	due_at = CASE WHEN $3::text IN ('released', 'unknown', 'in_doubt') AND $9::bigint > 0 THEN clock.now + ` + micro("$9") + ` END,
	generation = l.generation + CASE WHEN $11::boolean THEN 1 ELSE 0 END,
	dedup_until = CASE WHEN NOT $11::boolean THEN l.dedup_until
		WHEN $12::bigint > 0 THEN clock.now + ` + micro("$12") + ` END,
	reason = CASE WHEN $3::text IS NULL THEN l.reason ELSE NULLIF($6::text, '') END,
	evidence = jsonb_path_query_array(l.evidence || $7::jsonb, ` + evidenceTrim + `),
	updated_at = clock.now
FROM clock
WHERE l.key = $1::text AND l.` + activePredicate + ` AND l.token = $2::bigint AND l.state = ANY($4::text[])
	AND ($14::boolean OR NOT (l.state IN ('claimed', 'calling', 'reconciling') AND clock.now < l.lease_until))
RETURNING ` + prefixed("l", recordCols)

	// Why an operator's settlement wrote nothing: the active record, and
	// whether a live claim holds it.
	q.settleWhy = `SELECT ` + recordCols + `, state IN ('claimed', 'calling', 'reconciling') AND ` + nowParam("$2") + ` < lease_until
FROM ` + t + ` WHERE key = $1::text AND ` + activePredicate

	q.revoke = `UPDATE ` + t + ` SET prev_state = state, state = 'revoked', reason = NULLIF($2::text, ''), updated_at = ` + nowParam("$3") + `
WHERE key = $1::text AND state IN ('applied', 'skipped')
RETURNING ` + recordCols

	q.lookup = `SELECT ` + recordCols + ` FROM ` + t + `
WHERE key = ANY($1::text[]) AND ` + activePredicate

	// The most recent failed record of each key since $2, on the exempt
	// records' index.
	q.lastRefusals = `SELECT DISTINCT ON (key) ` + recordCols + ` FROM ` + t + `
WHERE key = ANY($1::text[]) AND state = 'failed' AND updated_at >= $2::timestamptz
ORDER BY key, updated_at DESC`

	// ListStuck: idempotency.Stuck in SQL.
	q.listStuck = `WITH clock AS MATERIALIZED (SELECT ` + nowParam("$1") + ` AS now)
SELECT ` + recordCols + ` FROM ` + t + `, clock
WHERE ` + stuckPredicate + `
	AND ($2::text = '' OR namespace = $2::text)
ORDER BY first_claimed_at, id
LIMIT $3::bigint`

	// History: the active record and the exempt ones, each half on its
	// own partial index.
	q.history = `SELECT ` + recordCols + ` FROM (
	SELECT id, ` + recordCols + ` FROM ` + t + ` WHERE key = $1::text AND ` + activePredicate + `
	UNION ALL
	SELECT id, ` + recordCols + ` FROM ` + t + ` WHERE key = $1::text AND state IN ('failed', 'revoked')
) AS h ORDER BY id DESC`

	// Recover, inside a transaction: the active record locked, and now.
	q.recoverRead = `SELECT ` + recordCols + `, id, ` + nowParam("$2") + ` FROM ` + t + `
WHERE key = $1::text AND ` + activePredicate + ` FOR UPDATE`
	q.recoverUpdate = `UPDATE ` + t + ` SET prev_state = state, state = 'applied', result = $2::bytea,
	token = nextval(` + n.seqLiteral + `), lease_until = NULL, due_at = NULL, reason = $3::text,
	evidence = jsonb_path_query_array(evidence || $4::jsonb, ` + evidenceTrim + `), updated_at = $5::timestamptz
WHERE id = $1::bigint
RETURNING ` + recordCols
	q.recoverInsert = `INSERT INTO ` + t + ` (key, namespace, state, fingerprint, result, token, claims, generation, evidence, reason, first_claimed_at, updated_at)
VALUES ($1::text, $2::text, 'applied', $3::bytea, $4::bytea, nextval(` + n.seqLiteral + `), 1, 1,
	jsonb_path_query_array($5::jsonb, ` + evidenceTrim + `), $6::text, ` + nowParam("$7") + `, ` + nowParam("$7") + `)
ON CONFLICT (key) WHERE ` + activePredicate + ` DO NOTHING
RETURNING ` + recordCols
	return q
}

// prefixed qualifies every column of cols with the alias a.
func prefixed(a, cols string) string {
	parts := strings.Split(cols, ", ")
	for i, p := range parts {
		parts[i] = a + "." + p
	}
	return strings.Join(parts, ", ")
}

// scanRecord scans recordCols plus extra destinations.
func scanRecord(row pgx.Row, extra ...any) (idempotency.Record, error) {
	// Value types, not pointers to pointers: pgx plans their scans with
	// less work and no allocation on every row.
	var (
		r                      idempotency.Record
		state                  string
		prev, reason           pgtype.Text
		lease, due, dedupUntil pgtype.Timestamptz
		evidence               []byte
	)
	var buf [20]any
	dest := append(append(buf[:0], &r.Key, &r.Namespace, &state, &prev, &r.Fingerprint, &r.Result, &r.Token, &r.Claims,
		&r.Generation, &lease, &due, &dedupUntil, &evidence, &reason, &r.FirstClaimedAt, &r.UpdatedAt), extra...)
	if err := row.Scan(dest...); err != nil {
		return idempotency.Record{}, err
	}
	r.State = idempotency.State(state)
	r.PrevState = idempotency.State(prev.String)
	r.LeaseUntil, r.DueAt, r.DedupUntil = lease.Time, due.Time, dedupUntil.Time
	r.Reason = reason.String
	if len(evidence) > 2 { // "[]" is no evidence
		if err := json.Unmarshal(evidence, &r.Evidence); err != nil {
			return idempotency.Record{}, fmt.Errorf("evidence of %s: %w", r.Namespace, err)
		}
	}
	return r, nil
}

func micros(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(max(1, (d+time.Microsecond-1)/time.Microsecond))
}

// evidenceJSON encodes attempts as a jsonb parameter. It is sent as text, so
// that every query execution mode (the simple protocol too) reads it as JSON.
// Their free text (a provider's error, its request id) goes through
// storedText first: jsonb refuses a NUL (\u0000).
func evidenceJSON(attempts []idempotency.Attempt) (string, error) {
	if len(attempts) == 0 {
		return "[]", nil
	}
	clean := make([]idempotency.Attempt, len(attempts))
	for i, a := range attempts {
		a.Error, a.RequestID = storedText(a.Error), storedText(a.RequestID)
		clean[i] = a
	}
	b, err := json.Marshal(clean)
	return string(b), err
}

// storedText is s as a text column can hold it: PostgreSQL refuses a NUL
// byte and invalid UTF-8 (SQLSTATE 22021), and a reason or an error message
// comes from a provider's answer, which may hold either. Such a byte would
// fail the whole statement: the change carrying it, and in a batch every
// change with it, a provider's success among them. Each NUL and each
// invalid sequence becomes U+FFFD.
func storedText(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
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
		var (
			c       idempotency.Claim
			verdict string
			stale   bool
		)
		rec, err := scanRecord(s.db.QueryRow(ctx, s.q.claim,
			req.Key, req.Namespace, fp, micros(req.Lease), req.TakeOver, micros(req.Window), s.n.clock(), req.Track, req.Reconcile),
			&verdict, &stale)
		switch {
		case err == nil && !stale:
			c.Record, c.Verdict = rec, parseVerdict(verdict)
			if c.Verdict == 0 {
				return idempotency.Claim{}, fmt.Errorf("pgguard: claim %s: unknown verdict %q", req.Namespace, verdict)
			}
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

func parseVerdict(s string) idempotency.Verdict {
	for v := idempotency.VerdictAcquired; v <= idempotency.VerdictInDoubt; v++ {
		if v.String() == s {
			return v
		}
	}
	return 0
}

// Transition implements idempotency.Store. Without a hook it is one UPDATE
// fenced by the token and the states the change may start from. With a hook
// it opens a transaction (a savepoint when the Store runs on a pgx.Tx), runs
// the same UPDATE, calls the hook with that transaction in its context
// (TxFrom, or the typed adapters OnComplete and OnFail), and commits; if the
// hook fails, everything is rolled back, the claim stays held, and the
// hook's error is returned wrapped.
func (s *Store) Transition(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	if err := c.Validate(); err != nil {
		return idempotency.Record{}, fmt.Errorf("pgguard: %w", err)
	}
	if c.By == idempotency.ByFormerHolder {
		return s.recover(ctx, c)
	}
	ev, err := evidenceJSON(c.Evidence)
	if err != nil {
		return idempotency.Record{}, fmt.Errorf("pgguard: %s: evidence: %w", c.To, err)
	}
	var to *string
	if c.To != "" {
		to = (*string)(&c.To)
	}
	args := []any{c.Key, c.Token, to, stateNames(c.From()), c.Result, storedText(c.Reason), ev, micros(c.Lease), micros(c.DueIn),
		c.AttemptEnded, c.NewGeneration(), micros(c.Window), s.n.clock(), true}
	op := "change to " + string(c.To)
	if c.To == "" {
		op = "extend"
	}
	if c.Hook == nil {
		return s.fenced(ctx, s.db, op, args)
	}
	return s.inTx(ctx, op, c.Hook, func(tx pgx.Tx) (idempotency.Record, error) { return s.fenced(ctx, tx, op, args) })
}

func stateNames(states []idempotency.State) []string {
	out := make([]string, len(states))
	for i, st := range states {
		out[i] = string(st)
	}
	return out
}

// fenced runs the fenced UPDATE; no row is ErrClaimLost.
func (s *Store) fenced(ctx context.Context, db DBTX, op string, args []any) (idempotency.Record, error) {
	rec, err := scanRecord(db.QueryRow(ctx, s.q.transition, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return idempotency.Record{}, idempotency.ErrClaimLost
	}
	if err != nil {
		return idempotency.Record{}, wrapErr(ctx, op, err)
	}
	return rec, nil
}

type txKey struct{}

// TxFrom returns the ledger's transaction a hook (idempotency.Change.Hook,
// Effect.OnComplete, Effect.OnFail) runs in, when pgguard's Store runs the
// hook. Write the domain row with it: it commits with the ledger's change
// or not at all. ok is false when the hook runs elsewhere (another store,
// such as idempotency.MemStore, which has no transaction).
func TxFrom(ctx context.Context) (tx pgx.Tx, ok bool) {
	tx, ok = ctx.Value(txKey{}).(pgx.Tx)
	return tx, ok
}

// OnComplete adapts a pgx hook into an Effect.OnComplete: fn gets the
// ledger's transaction without a type assertion. Run by a store without a
// pgx transaction, the hook fails with ErrNoTx (and nothing is recorded);
// it never panics.
func OnComplete[In, Out any](fn func(ctx context.Context, tx pgx.Tx, in In, out Out) error) func(context.Context, In, Out) error {
	return func(ctx context.Context, in In, out Out) error {
		tx, ok := TxFrom(ctx)
		if !ok {
			return ErrNoTx
		}
		return fn(ctx, tx, in, out)
	}
}

// OnFail adapts a pgx hook into an Effect.OnFail, as OnComplete does.
func OnFail[In any](fn func(ctx context.Context, tx pgx.Tx, in In, cause error) error) func(context.Context, In, error) error {
	return func(ctx context.Context, in In, cause error) error {
		tx, ok := TxFrom(ctx)
		if !ok {
			return ErrNoTx
		}
		return fn(ctx, tx, in, cause)
	}
}

// inTx runs update and then hook in one transaction (a savepoint when the
// store's handle is itself a transaction), and commits only if both
// succeed.
func (s *Store) inTx(ctx context.Context, op string, hook func(context.Context) error, update func(pgx.Tx) (idempotency.Record, error)) (idempotency.Record, error) {
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
	if hook != nil {
		if err := hook(context.WithValue(ctx, txKey{}, tx)); err != nil {
			return idempotency.Record{}, fmt.Errorf("pgguard: %s: hook: %w", op, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return idempotency.Record{}, wrapErr(ctx, op+": commit", err)
	}
	return rec, nil
}

// recover applies a Recover change in a short transaction: it locks the
// key's active record (if any) and writes the success unless a live claim
// holds it, it is finished, or it carries another fingerprint.
func (s *Store) recover(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	ev, err := evidenceJSON(c.Evidence)
	if err != nil {
		return idempotency.Record{}, fmt.Errorf("pgguard: recover: evidence: %w", err)
	}
	fp := c.Fingerprint
	if len(fp) == 0 {
		fp = nil
	}
	const reason = "recovered: the completion of a lost claim"
	var cur idempotency.Record
	var refused error
	rec, err := s.inTx(ctx, "recover", c.Hook, func(tx pgx.Tx) (idempotency.Record, error) {
		var (
			id  int64
			now time.Time
		)
		got, err := scanRecord(tx.QueryRow(ctx, s.q.recoverRead, c.Key, s.n.clock()), &id, &now)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			ins, err := scanRecord(tx.QueryRow(ctx, s.q.recoverInsert, c.Key, c.Namespace, fp, nonNilBytes(c.Result), ev, reason, s.n.clock()))
			if errors.Is(err, pgx.ErrNoRows) {
				// A claim inserted a record since: it holds the key.
				refused = idempotency.ErrClaimLive
				return idempotency.Record{}, refused
			}
			return ins, wrapErrIf(ctx, "recover: insert", err)
		case err != nil:
			return idempotency.Record{}, wrapErr(ctx, "recover: read", err)
		}
		cur = got
		switch {
		case got.State.Held() && now.Before(got.LeaseUntil):
			refused = idempotency.ErrClaimLive
		case got.State.Done(), !got.FingerprintMatches(fp):
			refused = idempotency.ErrClaimLost
		}
		if refused != nil {
			return idempotency.Record{}, refused
		}
		upd, err := scanRecord(tx.QueryRow(ctx, s.q.recoverUpdate, id, nonNilBytes(c.Result), reason, ev, now))
		return upd, wrapErrIf(ctx, "recover: update", err)
	})
	if refused != nil {
		return cur, refused
	}
	return rec, err
}

func nonNilBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func wrapErrIf(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	return wrapErr(ctx, op, err)
}

// Settle implements idempotency.Operator: one UPDATE fenced by the token
// and, unless req.Force, by the lease (a live claim is ErrClaimLive).
func (s *Store) Settle(ctx context.Context, req idempotency.SettleRequest) (idempotency.Record, error) {
	if err := req.Validate(); err != nil {
		return idempotency.Record{}, fmt.Errorf("pgguard: %w", err)
	}
	to := string(req.State)
	args := []any{req.Key, req.Token, &to, stateNames(idempotency.Allowed(req.State, idempotency.ByOperator)), req.Result,
		storedText(req.Reason), "[]", int64(0), int64(0), true, false, int64(0), s.n.clock(), req.Force}
	rec, err := s.fenced(ctx, s.db, "settle", args)
	if !errors.Is(err, idempotency.ErrClaimLost) {
		return rec, err
	}
	var live bool
	cur, werr := scanRecord(s.db.QueryRow(ctx, s.q.settleWhy, req.Key, s.n.clock()), &live)
	if werr == nil && cur.Token == req.Token && live && slices.Contains(idempotency.Allowed(req.State, idempotency.ByOperator), cur.State) {
		return cur, idempotency.ErrClaimLive
	}
	return idempotency.Record{}, idempotency.ErrClaimLost
}

// Revoke implements idempotency.Operator: one UPDATE of the applied or
// skipped record; the stored result is kept for the audit trail.
func (s *Store) Revoke(ctx context.Context, key string, reason string) (idempotency.Record, error) {
	rec, err := scanRecord(s.db.QueryRow(ctx, s.q.revoke, key, storedText(reason), s.n.clock()))
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

// LastRefusals implements idempotency.RefusalLookup with one query; no
// keys, no query.
func (s *Store) LastRefusals(ctx context.Context, keys []string, since time.Time) (map[string]idempotency.Record, error) {
	out := map[string]idempotency.Record{}
	if len(keys) == 0 {
		return out, nil
	}
	recs, err := s.collect(ctx, "last refusals", s.q.lastRefusals, keys, since)
	for _, r := range recs {
		out[r.Key] = r
	}
	return out, err
}

// ListStuck implements idempotency.Operator with one query
// (idempotency.Stuck in SQL), oldest first claim first.
func (s *Store) ListStuck(ctx context.Context, req idempotency.ListStuckRequest) ([]idempotency.Record, error) {
	limit := req.Limit
	if limit <= 0 {
		limit = 100
	}
	return s.collect(ctx, "list stuck", s.q.listStuck, s.n.clock(), req.Namespace, int64(limit))
}

// History implements idempotency.Operator with one query.
func (s *Store) History(ctx context.Context, key string) ([]idempotency.Record, error) {
	return s.collect(ctx, "history", s.q.history, key)
}

func (s *Store) collect(ctx context.Context, op, sql string, args ...any) ([]idempotency.Record, error) {
	rows, err := s.db.Query(ctx, sql, args...)
	if err != nil {
		return nil, wrapErr(ctx, op, err)
	}
	recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (idempotency.Record, error) { return scanRecord(row) })
	if err != nil {
		return nil, wrapErr(ctx, op, err)
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
