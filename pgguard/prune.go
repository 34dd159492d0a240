package pgguard

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/effectonce/effectonce/idempotency"
)

// ErrInvalidPrune is returned by Prune for a request it cannot run: no
// namespace, no cut-off or two of them, a negative OlderThan, a batch size
// out of range. Nothing is sent to the database.
var ErrInvalidPrune = errors.New("pgguard: invalid prune request")

// DefaultPruneBatch is the batch size of a PruneRequest that sets none.
const DefaultPruneBatch = 1000

// MaxPruneBatch bounds PruneRequest.BatchSize. A batch is one statement, so
// one transaction: it holds its rows' locks, and its WAL, until it commits.
const MaxPruneBatch = 100_000

// finishedPredicate is the predicate of migration 002's <table>_finished
// index, word for word: the planner uses a partial index only when the
// query's WHERE clause implies its predicate.
const finishedPredicate = `state IN ('applied', 'skipped', 'failed', 'revoked')`

// PruneRequest says which finished records Prune deletes: those of one
// namespace whose last change (Record.UpdatedAt: completion, failure,
// revocation) is older than a cut-off.
type PruneRequest struct {
	// Namespace is the key namespace (idempotency.KeySpace.Namespace) whose
	// records are pruned. Required: how long records are kept is chosen per
	// effect (Effect.Retain), and the index Prune walks starts with it.
	Namespace string

	// Before is the cut-off: records last changed strictly before it are
	// deleted. Set Before or OlderThan, not both.
	Before time.Time

	// OlderThan sets the cut-off to now minus OlderThan, where now is the
	// store's clock: Config.Now, or the database's clock_timestamp() (read
	// once, one extra statement), the clock the records' times were written
	// with. Must be positive when set.
	OlderThan time.Duration

	// BatchSize is the most records one DELETE statement removes. Zero
	// means DefaultPruneBatch; at most MaxPruneBatch.
	BatchSize int

	// DryRun counts the records the prune would delete now, in one
	// statement, and deletes nothing.
	DryRun bool
}

// PruneResult says what Prune did.
type PruneResult struct {
	// Before is the cut-off used: records last changed before it were
	// eligible.
	Before time.Time
	// Deleted is the number of records deleted (zero in a dry run).
	Deleted int64
	// Batches is the number of DELETE statements run; the last one deleted
	// fewer than the batch size (zero in a dry run).
	Batches int
	// Matched is, in a dry run, the number of records the prune would have
	// deleted; zero otherwise.
	Matched int64
}

func (r PruneRequest) validate() (batch int, err error) {
	batch = r.BatchSize
	if batch == 0 {
		batch = DefaultPruneBatch
	}
	switch {
	case r.Namespace == "":
		return 0, fmt.Errorf("%w: no namespace", ErrInvalidPrune)
	case r.Before.IsZero() && r.OlderThan == 0:
		return 0, fmt.Errorf("%w: no cut-off (set Before or OlderThan)", ErrInvalidPrune)
	case !r.Before.IsZero() && r.OlderThan != 0:
		return 0, fmt.Errorf("%w: both Before and OlderThan are set", ErrInvalidPrune)
	case r.OlderThan < 0:
		return 0, fmt.Errorf("%w: negative OlderThan %v", ErrInvalidPrune, r.OlderThan)
	case batch < 0 || batch > MaxPruneBatch:
		return 0, fmt.Errorf("%w: batch size %d out of range 1..%d", ErrInvalidPrune, r.BatchSize, MaxPruneBatch)
	}
	return batch, nil
}

// Prune deletes the finished records (applied, skipped, failed, revoked) of
// req.Namespace last changed before the cut-off, oldest first, in batches:
// one DELETE statement per batch, each removing at most req.BatchSize
// records, until a batch removes fewer. It never deletes a pending record
// (claimed, calling, reconciling, released, unknown, in_doubt), whatever
// its age, nor a record of another namespace.
//
// Each batch walks the ledger's <table>_finished index on (namespace,
// updated_at) (migration 002) from its oldest entry, so a batch costs the
// same on a ledger of any size: no statement scans the table. Records a
// concurrent transaction has locked (an operator revoking one) are skipped
// and left for the next prune, so Prune waits for nobody and two pruners do
// not block each other.
//
// The context is checked before every batch: cancelled, Prune stops there
// and returns what it deleted so far with an error wrapping the context's.
// Deleted batches stay deleted. On a pgx.Tx (Store.WithDB), every batch
// joins the caller's transaction and nothing is deleted until it commits;
// run prunes on a pool.
//
// Deleting a finished record forgets the key: a delivery of the same intent
// after that is a first delivery again, and the provider is called. Prune
// is safe only where that call is harmless: see idempotency.Effect.Retain,
// and PruneEffect, which keeps the records of effects without a Retain for
// ever. An invalid request is ErrInvalidPrune.
func (s *Store) Prune(ctx context.Context, req PruneRequest) (PruneResult, error) {
	batch, err := req.validate()
	if err != nil {
		return PruneResult{}, err
	}
	op := "prune " + req.Namespace
	res := PruneResult{Before: req.Before}
	if req.OlderThan > 0 {
		now, err := s.now(ctx)
		if err != nil {
			return PruneResult{}, wrapErr(ctx, op+": read the clock", err)
		}
		res.Before = now.Add(-req.OlderThan)
	}
	t := s.n.table
	eligible := `namespace = $1::text AND ` + finishedPredicate + ` AND updated_at < $2::timestamptz`
	if req.DryRun {
		err := s.db.QueryRow(ctx, `SELECT count(*) FROM `+t+` WHERE `+eligible, req.Namespace, res.Before).Scan(&res.Matched)
		if err != nil {
			return PruneResult{}, wrapErr(ctx, op+": count", err)
		}
		return res, nil
	}
	// The batch is chosen by the index (ORDER BY its second column, a
	// literal LIMIT, so that a generic plan estimates it as well as a
	// custom one) and deleted by physical address: the outer DELETE is a
	// TID scan whatever the planner thinks of the batch's size. A row
	// changed after the statement's snapshot is not deleted by this batch.
	del := `DELETE FROM ` + t + ` WHERE ctid = ANY (ARRAY(
	SELECT ctid FROM ` + t + `
	WHERE ` + eligible + `
	ORDER BY updated_at
	LIMIT ` + strconv.Itoa(batch) + `
	FOR UPDATE SKIP LOCKED))`
	for {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("pgguard: %s: stopped after %d batches: %w", op, res.Batches, err)
		}
		tag, err := s.db.Exec(ctx, del, req.Namespace, res.Before)
		if err != nil {
			return res, wrapErr(ctx, op, err)
		}
		res.Batches++
		res.Deleted += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return res, nil
		}
	}
}

// now returns the store's clock: Config.Now, or the database's.
func (s *Store) now(ctx context.Context) (time.Time, error) {
	if s.n.now != nil {
		return s.n.now(), nil
	}
	var now time.Time
	err := s.db.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now)
	return now, err
}

// PruneEffect prunes what eff.Retain allows: the finished records of
// namespace (the namespace of eff's keys, which the Effect does not carry)
// last changed more than eff.Retain ago on the store's clock, in batches of
// DefaultPruneBatch. A zero Retain means the records are kept for ever:
// PruneEffect then sends nothing and returns a zero PruneResult. An invalid
// effect (a negative Retain) is an error matching
// idempotency.ErrInvalidEffect.
func PruneEffect[In, Out any](ctx context.Context, s *Store, eff *idempotency.Effect[In, Out], namespace string) (PruneResult, error) {
	if err := eff.Validate(); err != nil {
		return PruneResult{}, fmt.Errorf("pgguard: prune %s: %w", namespace, err)
	}
	if eff.Retain == 0 {
		return PruneResult{}, nil
	}
	return s.Prune(ctx, PruneRequest{Namespace: namespace, OlderThan: eff.Retain})
}
