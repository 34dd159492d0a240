package pgguard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/effectonce/effectonce/idempotency"
)

var _ idempotency.BatchStore = (*Store)(nil)

// maxDeadlockTries bounds the re-runs of a batch statement PostgreSQL
// aborted to break a deadlock (two batches locking shared rows in other
// orders). A failed statement wrote nothing, so it is safe to run again,
// outside a caller's transaction.
const maxDeadlockTries = 3

// batchQueries are the statements of ClaimMany and TransitionMany.
type batchQueries struct {
	claimMany, transitionMany string
}

func buildBatchQueries(n *names) *batchQueries {
	t := n.table
	bq := &batchQueries{}
	us := func(col string) string { return "(" + col + " * interval '1 microsecond')" }
	d := func(r string) string {
		return decide(n, r, "q.fp", "q.lease", "q.takeover", "q.win", "q.reconcile", "clock.now")
	}

	// Many claims in one statement: Claim's rule for every request, set
	// based. Parameters are arrays, one element per request, every key
	// distinct: $1 keys, $2 namespaces, $3 fingerprints, $4 leases (µs),
	// $5 takeover, $6 windows (µs), $7 track, $8 reconcile; $9 now.
	//
	//  - cur: the active rows the snapshot sees, with their verdicts.
	//  - ins: a record for each key that has none, in key order (so that
	//    two overlapping batches lock their keys in the same order); a key
	//    some other transaction inserted since the snapshot is skipped (ON
	//    CONFLICT DO NOTHING) and reported by its absence.
	//  - upd: the takeovers: only rows the snapshot says the request may
	//    acquire, decided again on the latest version of the row (an UPDATE
	//    re-checks its WHERE on a row changed under it), each with its own
	//    new token.
	//  - the result: what ins and upd took, then the snapshot's rows that
	//    were not taken. A row whose snapshot verdict acquired but that upd
	//    did not take is stale, and a key with no row at all was taken by
	//    someone else since the snapshot: the caller runs the statement
	//    again for those keys (see ClaimMany).
	bq.claimMany = `WITH clock AS MATERIALIZED (
	SELECT ` + nowParam("$9") + ` AS now
), q AS MATERIALIZED (
	SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[], $5::boolean[], $6::bigint[], $7::boolean[], $8::boolean[])
		AS q(key, namespace, fp, lease, takeover, win, track, reconcile)
), cur AS MATERIALIZED (
	SELECT l.id, ` + prefixed("l", recordCols) + `, ` + d("l") + ` AS verdict
	FROM q JOIN ` + t + ` AS l ON l.key = q.key AND l.` + activePredicate + ` CROSS JOIN clock
), ins AS (
	INSERT INTO ` + t + ` AS l (key, namespace, state, fingerprint, token, claims, generation, lease_until, dedup_until, first_claimed_at, updated_at)
	SELECT q.key, q.namespace, CASE WHEN q.track THEN 'claimed' ELSE 'calling' END, q.fp, nextval(` + n.seqLiteral + `), 1, 1,
		clock.now + ` + us("q.lease") + `, CASE WHEN q.win > 0 THEN clock.now + ` + us("q.win") + ` END, clock.now, clock.now
	FROM q CROSS JOIN clock
	WHERE NOT EXISTS (SELECT FROM cur WHERE cur.key = q.key)
	ORDER BY q.key
	ON CONFLICT (key) WHERE ` + activePredicate + ` DO NOTHING
	RETURNING ` + prefixed("l", recordCols) + `
), upd AS (
	UPDATE ` + t + ` AS l SET
		prev_state = l.state,
		state = CASE
			WHEN ` + d("l") + ` = 'reconcile' THEN 'reconciling'
			WHEN l.state IN ('calling', 'unknown') THEN 'calling'
			WHEN q.track THEN 'claimed'
			ELSE 'calling' END,
		token = nextval(` + n.seqLiteral + `), claims = l.claims + 1, lease_until = clock.now + ` + us("q.lease") + `, due_at = NULL,
		dedup_until = CASE
			WHEN l.state IN ('claimed', 'released') THEN CASE WHEN q.win > 0 THEN clock.now + ` + us("q.win") + ` END
			WHEN l.dedup_until IS NOT NULL OR q.win <= 0 THEN l.dedup_until
			ELSE l.first_claimed_at + ` + us("q.win") + ` END,
		updated_at = clock.now
	FROM q, cur, clock
	WHERE cur.key = q.key AND cur.verdict IN ('acquired', 'reconcile') AND l.id = cur.id
		AND l.` + activePredicate + ` AND ` + d("l") + ` IN ('acquired', 'reconcile')
	RETURNING ` + prefixed("l", recordCols) + `
)
SELECT ` + recordCols + `, CASE WHEN state = 'reconciling' THEN 'reconcile' ELSE 'acquired' END, false, clock.now FROM ins, clock
UNION ALL
SELECT ` + recordCols + `, CASE WHEN state = 'reconciling' THEN 'reconcile' ELSE 'acquired' END, false, clock.now FROM upd, clock
UNION ALL
SELECT ` + prefixed("cur", recordCols) + `, cur.verdict, cur.verdict IN ('acquired', 'reconcile'), clock.now FROM cur, clock
WHERE NOT EXISTS (SELECT FROM upd WHERE upd.key = cur.key)`

	// Many fenced changes in one statement: Transition's UPDATE for every
	// change, each fenced by its own token and source states. Parameters
	// are arrays, one element per change, every key distinct: $1 keys, $2
	// tokens, $3 target states ('' keeps the state), $4 source states
	// (comma-separated), $5 results, $6 reasons, $7 evidence (JSON text),
	// $8 leases (µs, 0 keeps), $9 due in (µs), $10 the attempt ended, $11 a
	// new generation, $12 its window (µs); $13 now; $14 the number of
	// changes. The result: the changed records with their change's
	// position; a change with no row was refused (ErrClaimLost).
	//
	// The LIMIT $14 limits nothing (it is the arrays' length); it keeps
	// the plan cache on the generic plan. A custom plan sees the arrays'
	// length (8 changes: 8 rows), the generic one cannot (unnest of a
	// parameter: 10 rows), so for batches under 10 every custom plan looked
	// cheaper and the statement was planned again on every execution
	// (0.72 ms against 0.47 ms for 8 completions). A LIMIT by a parameter
	// is estimated at a tenth of its input in the generic plan, which is
	// then the cheaper one at every size; its shape (each change found by
	// the active-key index) is the right one at every size too.
	bq.transitionMany = `WITH clock AS MATERIALIZED (
	SELECT ` + nowParam("$13") + ` AS now
), c AS MATERIALIZED (
	SELECT key, token, NULLIF(to_state, '') AS to_state, string_to_array(from_states, ',') AS from_states, result,
		reason, evidence::jsonb AS evidence, lease, due_in, ended, new_gen, win, ord
	FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bytea[], $6::text[], $7::text[], $8::bigint[],
		$9::bigint[], $10::boolean[], $11::boolean[], $12::bigint[]) WITH ORDINALITY
		AS c(key, token, to_state, from_states, result, reason, evidence, lease, due_in, ended, new_gen, win, ord)
	LIMIT $14::bigint
)
UPDATE ` + t + ` AS l SET
	prev_state = l.state,
	state = coalesce(c.to_state, l.state),
	result = CASE WHEN c.to_state IN ('applied', 'skipped') THEN coalesce(c.result, '\x'::bytea)
		WHEN c.to_state = 'failed' THEN NULL ELSE l.result END,
	lease_until = CASE
		WHEN coalesce(c.to_state, l.state) IN ('claimed', 'calling', 'reconciling') THEN
			CASE WHEN c.lease > 0 THEN clock.now + ` + us("c.lease") + ` ELSE l.lease_until END
		WHEN c.to_state IN ('unknown', 'in_doubt') THEN CASE WHEN c.ended THEN NULL ELSE l.lease_until END
		ELSE NULL END,
	due_at = CASE WHEN c.to_state IN ('released', 'unknown', 'in_doubt') AND c.due_in > 0 THEN clock.now + ` + us("c.due_in") + ` END,
	generation = l.generation + CASE WHEN c.new_gen THEN 1 ELSE 0 END,
	dedup_until = CASE WHEN NOT c.new_gen THEN l.dedup_until
		WHEN c.win > 0 THEN clock.now + ` + us("c.win") + ` END,
	reason = CASE WHEN c.to_state IS NULL THEN l.reason ELSE NULLIF(c.reason, '') END,
	evidence = jsonb_path_query_array(l.evidence || c.evidence, ` + evidenceTrim + `),
	updated_at = clock.now
FROM c, clock
WHERE l.key = c.key AND l.` + activePredicate + ` AND l.token = c.token AND l.state = ANY(c.from_states)
RETURNING ` + prefixed("l", recordCols) + `, c.ord`
	return bq
}

// ClaimMany implements idempotency.BatchStore: one statement for a batch
// of distinct keys, whatever its size. Requests for a key already in the
// batch are decided, after the first, on the record it left (by
// idempotency.Decide, at the statement's time), and sent in a further
// statement only in the rare case that the rule lets them acquire it. As
// with Claim, a key whose row changed after the statement's snapshot is
// claimed again by a new statement, at most 5 times in all
// (ErrClaimContention), and a deadlock between overlapping batches is run
// again (outside a caller's transaction). Inside a caller's transaction the
// claims commit with it.
func (s *Store) ClaimMany(ctx context.Context, reqs []idempotency.ClaimRequest) ([]idempotency.Claim, error) {
	for _, r := range reqs {
		if r.Key == "" || r.Lease <= 0 {
			return nil, fmt.Errorf("pgguard: claim many %s: needs a key and a positive lease", r.Namespace)
		}
	}
	out := make([]idempotency.Claim, len(reqs))
	pending := make([]int, len(reqs))
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		round, rest := firstOfEachKey(pending, func(i int) string { return reqs[i].Key })
		left, now, err := s.claimRound(ctx, reqs, round, out)
		if err != nil {
			return nil, s.giveBack(ctx, out, err)
		}
		// A later request for a key decided in this round meets the record
		// the round left.
		var next []int
		for _, i := range rest {
			if rec, ok := left[reqs[i].Key]; ok {
				if v, _ := idempotency.Decide(rec, reqs[i], now); !v.Holds() {
					out[i] = idempotency.Claim{Verdict: v, Record: rec.Clone()}
					continue
				}
			}
			next = append(next, i)
		}
		pending = next
	}
	return out, nil
}

// giveBack is ClaimMany's answer to a statement that failed after earlier
// ones took claims (a second round, a retry after a stale row): the caller
// gets no Claim, so it will never call under them. Each such claim on a key
// nothing may have acted on (a new record, or one that was released or
// claimed before) is released at once, with the failure as its reason,
// instead of staying held and, past its lease, looking as if a call may have
// been made. A takeover of a record that may have acted stays held: past
// its lease it is what it was before. Inside a caller's transaction the
// failure rolls every claim back, and nothing is left to give.
func (s *Store) giveBack(ctx context.Context, out []idempotency.Claim, cause error) error {
	if _, inTx := s.db.(pgx.Tx); inTx {
		return cause
	}
	var changes []idempotency.Change
	for _, c := range out {
		if c.Verdict.Holds() && !c.Record.PrevState.MayHaveActed() {
			changes = append(changes, idempotency.Release(c.Record.Key, c.Record.Token, "claim batch failed before any call: "+cause.Error(), 0))
		}
	}
	if len(changes) == 0 {
		return cause
	}
	res, err := s.TransitionMany(context.WithoutCancel(ctx), changes)
	if err != nil {
		return errors.Join(cause, fmt.Errorf("pgguard: claim many: giving back %d claims: %w", len(changes), err))
	}
	for i, r := range res {
		// ErrClaimLost: the claim was never committed (the failed
		// statement's own rows), or its lease already passed to another.
		if r.Err != nil && !errors.Is(r.Err, idempotency.ErrClaimLost) {
			return errors.Join(cause, fmt.Errorf("pgguard: claim many: giving back %s: %w", changes[i].Key, r.Err))
		}
	}
	return cause
}

// firstOfEachKey splits idx into the first index of each key (in order)
// and the rest.
func firstOfEachKey(idx []int, key func(int) string) (first, rest []int) {
	seen := make(map[string]struct{}, len(idx))
	for _, i := range idx {
		if _, dup := seen[key(i)]; dup {
			rest = append(rest, i)
			continue
		}
		seen[key(i)] = struct{}{}
		first = append(first, i)
	}
	return first, rest
}

// claimRound claims the requests at idx (distinct keys) into out, running
// the statement again for keys whose row changed after its snapshot. It
// returns the record each key was left with and the time of the last
// statement.
func (s *Store) claimRound(ctx context.Context, reqs []idempotency.ClaimRequest, idx []int, out []idempotency.Claim) (map[string]idempotency.Record, time.Time, error) {
	left := make(map[string]idempotency.Record, len(idx))
	var now time.Time
	byKey := make(map[string]int, len(idx))
	for try := 1; len(idx) > 0; try++ {
		if try > maxClaimTries {
			return nil, now, fmt.Errorf("pgguard: claim many %s: %w", reqs[idx[0]].Namespace, ErrClaimContention)
		}
		if try > 1 {
			s.claimRetries.Add(1)
			if err := ctx.Err(); err != nil {
				return nil, now, fmt.Errorf("pgguard: claim many: %w", err)
			}
		}
		n := len(idx)
		keys, nss, lease, window := make([]string, n), make([]string, n), make([]int64, n), make([]int64, n)
		fps := make([][]byte, n)
		takeover, track, reconcile := make([]bool, n), make([]bool, n), make([]bool, n)
		clear(byKey)
		for j, i := range idx {
			r := reqs[i]
			keys[j], nss[j], lease[j], window[j] = r.Key, r.Namespace, micros(r.Lease), micros(r.Window)
			if len(r.Fingerprint) > 0 {
				fps[j] = r.Fingerprint // no fingerprint is NULL, whether nil or empty
			}
			takeover[j], track[j], reconcile[j] = r.TakeOver, r.Track, r.Reconcile
			byKey[r.Key] = i
		}
		var stale []int
		err := s.retryDeadlock(ctx, func() error {
			stale = stale[:0]
			rows, err := s.db.Query(ctx, s.q.batch.claimMany, keys, nss, fps, lease, takeover, window, track, reconcile, s.n.clock())
			if err != nil {
				return err
			}
			defer rows.Close()
			answered := make(map[string]bool, n)
			for rows.Next() {
				var (
					verdict string
					isStale bool
				)
				rec, err := scanRecord(rows, &verdict, &isStale, &now)
				if err != nil {
					return err
				}
				i, ok := byKey[rec.Key]
				if !ok || answered[rec.Key] {
					return fmt.Errorf("unexpected row for %s", reqs[idx[0]].Namespace)
				}
				answered[rec.Key] = true
				if isStale {
					stale = append(stale, i)
					continue
				}
				v := parseVerdict(verdict)
				if v == 0 {
					return fmt.Errorf("unknown verdict %q", verdict)
				}
				out[i] = idempotency.Claim{Verdict: v, Record: rec}
				left[rec.Key] = rec
			}
			if err := rows.Err(); err != nil {
				return err
			}
			for _, i := range idx {
				if !answered[reqs[i].Key] {
					stale = append(stale, i) // taken by someone after the snapshot
				}
			}
			return nil
		})
		if err != nil {
			// A statement that failed wrote nothing; ClaimMany gives back
			// the earlier tries' claims (giveBack).
			return nil, now, wrapErr(ctx, "claim many "+reqs[idx[0]].Namespace, err)
		}
		idx = stale
	}
	return left, now, nil
}

// retryDeadlock runs fn, again when PostgreSQL aborted it to break a
// deadlock and the store is not inside a caller's transaction (which the
// error has aborted).
func (s *Store) retryDeadlock(ctx context.Context, fn func() error) error {
	_, inTx := s.db.(pgx.Tx)
	for try := 1; ; try++ {
		err := fn()
		var (
			pgErr *pgconn.PgError
			fin   finalErr
		)
		if errors.As(err, &fin) {
			return fin.error
		}
		if err == nil || inTx || try == maxDeadlockTries || !errors.As(err, &pgErr) || pgErr.Code != "40P01" || ctx.Err() != nil {
			return err
		}
	}
}

// TransitionMany implements idempotency.BatchStore. Changes without a hook
// are written by one UPDATE (fenced row by row, by each change's own token
// and source states); a batch where some change has a hook runs in one
// transaction (a savepoint inside a caller's transaction): the UPDATE of
// the plain changes, then, for each hooked change, a savepoint, its own
// fenced UPDATE, its hook (with the transaction in its context, TxFrom), and
// the savepoint's release, or its rollback when the hook fails, which undoes
// that change only. One commit for the batch. Changes of one key are
// applied in rounds, one statement (or transaction) per round, in order.
// Recover changes, rare, each run in their own short transaction as with
// Transition.
func (s *Store) TransitionMany(ctx context.Context, changes []idempotency.Change) ([]idempotency.TransitionResult, error) {
	out := make([]idempotency.TransitionResult, len(changes))
	var todo []int
	for i, c := range changes {
		if err := c.Validate(); err != nil {
			out[i].Err = fmt.Errorf("pgguard: %w", err)
			continue
		}
		todo = append(todo, i)
	}
	for len(todo) > 0 {
		round, rest := firstOfEachKey(todo, func(i int) string { return changes[i].Key })
		if err := s.transitionRound(ctx, changes, round, out); err != nil {
			return nil, err
		}
		todo = rest
	}
	return out, nil
}

// transitionRound applies the changes at idx (distinct keys) into out.
func (s *Store) transitionRound(ctx context.Context, changes []idempotency.Change, idx []int, out []idempotency.TransitionResult) error {
	var plain, hooked, recovers []int
	for _, i := range idx {
		switch c := changes[i]; {
		case c.By == idempotency.ByFormerHolder:
			recovers = append(recovers, i)
		case c.Hook != nil:
			hooked = append(hooked, i)
		default:
			plain = append(plain, i)
		}
	}
	if len(hooked) == 0 {
		if len(plain) > 0 {
			if err := s.retryDeadlock(ctx, func() error { return s.changeMany(ctx, s.db, changes, plain, out) }); err != nil {
				return wrapErr(ctx, "transition many", err)
			}
		}
	} else {
		err := s.retryDeadlock(ctx, func() error { return s.hookedRound(ctx, changes, plain, hooked, out) })
		if err != nil {
			return wrapErr(ctx, "transition many", err)
		}
	}
	for _, i := range recovers {
		out[i].Record, out[i].Err = s.recover(ctx, changes[i])
	}
	return nil
}

// hookedRound writes plain and hooked changes in one transaction, each
// hook in a savepoint with its own change.
func (s *Store) hookedRound(ctx context.Context, changes []idempotency.Change, plain, hooked []int, out []idempotency.TransitionResult) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return err
	}
	// Rolling back after a failure must not depend on the caller's context.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if len(plain) > 0 {
		if err := s.changeMany(ctx, tx, changes, plain, out); err != nil {
			return err
		}
	}
	for _, i := range hooked {
		c := changes[i]
		sp, err := tx.Begin(ctx)
		if err != nil {
			return final(err)
		}
		if err := s.changeMany(ctx, sp, changes, []int{i}, out); err != nil {
			// This change's statement failed: its savepoint keeps the
			// transaction usable for the others.
			if rerr := sp.Rollback(ctx); rerr != nil {
				return final(rerr)
			}
			out[i] = idempotency.TransitionResult{Err: wrapErr(ctx, changeOp(c), err)}
			continue
		}
		if out[i].Err != nil { // refused: its hook does not run
			if err := sp.Rollback(ctx); err != nil {
				return final(err)
			}
			continue
		}
		if herr := c.Hook(context.WithValue(ctx, txKey{}, sp)); herr != nil {
			// The hook's failure undoes its own change only.
			if err := sp.Rollback(ctx); err != nil {
				return final(err)
			}
			out[i] = idempotency.TransitionResult{Err: fmt.Errorf("pgguard: %s: hook: %w", changeOp(c), herr)}
			continue
		}
		if err := sp.Commit(ctx); err != nil {
			return final(err)
		}
	}
	return final(tx.Commit(ctx))
}

// finalErr marks an error met once hooks may have run: the batch is not
// run again (its hooks would run twice).
type finalErr struct{ error }

func (e finalErr) Unwrap() error { return e.error }

func final(err error) error {
	if err == nil {
		return nil
	}
	return finalErr{err}
}

func changeOp(c idempotency.Change) string {
	if c.To == "" {
		return "extend"
	}
	return "change to " + string(c.To)
}

// changeMany runs the batch UPDATE for the changes at idx (distinct keys)
// on db and fills out: the record, or ErrClaimLost for a change no row
// took.
func (s *Store) changeMany(ctx context.Context, db DBTX, changes []idempotency.Change, idx []int, out []idempotency.TransitionResult) error {
	n := len(idx)
	keys, to, from, reasons, evidence := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	tokens, lease, due, window := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	results := make([][]byte, n)
	ended, newGen := make([]bool, n), make([]bool, n)
	for j, i := range idx {
		c := changes[i]
		ev, err := evidenceJSON(c.Evidence)
		if err != nil {
			return fmt.Errorf("%s: evidence: %w", c.To, err)
		}
		keys[j], tokens[j], to[j], reasons[j], evidence[j] = c.Key, c.Token, string(c.To), storedText(c.Reason), ev
		from[j] = strings.Join(stateNames(c.From()), ",")
		results[j] = c.Result
		lease[j], due[j], window[j] = micros(c.Lease), micros(c.DueIn), micros(c.Window)
		ended[j], newGen[j] = c.AttemptEnded, c.NewGeneration()
		out[i] = idempotency.TransitionResult{Err: idempotency.ErrClaimLost}
	}
	rows, err := db.Query(ctx, s.q.batch.transitionMany, keys, tokens, to, from, results, reasons, evidence, lease, due, ended, newGen, window, s.n.clock(), int64(n))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var ord int64
		rec, err := scanRecord(rows, &ord)
		if err != nil {
			return err
		}
		if ord < 1 || int(ord) > n {
			return fmt.Errorf("change %d of %d", ord, n)
		}
		out[idx[ord-1]] = idempotency.TransitionResult{Record: rec}
	}
	return rows.Err()
}
