package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
)

func init() {
	commands = []*command{
		{name: "stuck", short: "list the records nobody will finish on their own", flags: stuckCmd,
			long: `Lists records in doubt, held past their lease, or unknown past the
provider's dedup window, oldest first claim first: the records an operator
settles. Exits 0 whether or not there are any; with -o json, count them.`},
		{name: "show", args: "KEY", positional: 1, short: "print a key's records, their history and evidence", flags: showCmd,
			long: `Prints every record ever stored under KEY, newest first (the active one,
and earlier failed or revoked ones), every field, and the evidence of the
last provider attempts. Exits 4 when the key has no record.`},
		{name: "settle", args: "KEY", positional: 1, short: "resolve a pending record by hand", flags: settleCmd,
			long: `Resolves KEY's pending record after you checked the provider: applied
(the effect exists: --result is its result, as JSON), skipped, or failed
(nothing happened: the key is free for a later run). The change is fenced
by the record's token: by the one --token names (as stuck or show printed
it), else by the one read just before. A record that changed meanwhile is
refused (exit 5) and nothing is written. A live claim is refused (exit 3):
its holder may still succeed; --force settles it anyway, and its holder's
late completion is then refused.`},
		{name: "revoke", args: "KEY", positional: 1, short: "mark an applied or skipped record revoked, freeing the key", flags: revokeCmd,
			long: `Marks KEY's applied or skipped record revoked, after you undid the effect
at the provider (deactivated a promotion code, say). The result is kept for
the audit trail; the key is free, so the next delivery of the intent acts
again. Exits 5 when the key's record is pending (settle it first).`},
		{name: "migrate", short: "create or upgrade the ledger table", flags: migrateCmd, noLedger: true,
			long: `Creates the ledger table, or upgrades it, with pgguard.Migrate: safe to
run twice and from several processes at once. The schema must exist.`},
		{name: "prune", short: "delete a namespace's old finished records", flags: pruneCmd,
			long: `Deletes the applied, skipped, failed and revoked records of --namespace
last changed more than --older-than ago (on the database's clock), in
batches; pending records are never deleted. A deleted record no longer
stops a late redelivery: read "When pruning is safe" in docs/operations.md
before choosing the period, and run with --dry-run first.`},
	}
}

func stuckCmd(fs *flag.FlagSet, _ *options) func(context.Context, *ledger, []string) error {
	ns := fs.String("namespace", "", "only this key namespace")
	limit := fs.Int("limit", 100, "at most this many records")
	return func(ctx context.Context, l *ledger, _ []string) error {
		if *limit <= 0 {
			return fail(exitUsage, "stuck: --limit must be positive")
		}
		recs, err := l.store.ListStuck(ctx, idempotency.ListStuckRequest{Namespace: *ns, Limit: *limit})
		if err != nil {
			return fail(exitFailure, "stuck: %v", err)
		}
		if l.json {
			out := struct {
				Count   int          `json:"count"`
				Limit   int          `json:"limit"`
				Records []recordView `json:"records"`
			}{Count: len(recs), Limit: *limit, Records: []recordView{}}
			for _, r := range recs {
				out.Records = append(out.Records, l.view(r))
			}
			return l.writeJSON(out)
		}
		if len(recs) == 0 {
			fmt.Fprintln(l.out, "no stuck records")
			return nil
		}
		tw := l.table()
		fmt.Fprintln(tw, "KEY\tNAMESPACE\tSTATE\tTOKEN\tAGE\tCLAIMS\tATTEMPTS\tREASON")
		for _, r := range recs {
			key, _ := showKey(r.Key, l.showKeys)
			reason := r.Reason
			if reason == "" {
				reason = stuckBecause(r, l.now)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", key, r.Namespace, r.State, r.Token,
				age(l.now.Sub(r.FirstClaimedAt)), r.Claims, attempts(r.Evidence), oneLine(reason, 80))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(recs) == *limit {
			fmt.Fprintf(l.out, "(the first %d; there may be more: raise --limit)\n", *limit)
		}
		return nil
	}
}

func showCmd(fs *flag.FlagSet, _ *options) func(context.Context, *ledger, []string) error {
	return func(ctx context.Context, l *ledger, pos []string) error {
		key := pos[0]
		shown, _ := showKey(key, l.showKeys)
		recs, err := l.store.History(ctx, key)
		if err != nil {
			return fail(exitFailure, "show: %v", err)
		}
		if len(recs) == 0 {
			return fail(exitNotFound, "no record for key %s", shown)
		}
		if l.json {
			out := struct {
				Key       string       `json:"key"`
				KeyHidden bool         `json:"key_hidden,omitempty"`
				Records   []recordView `json:"records"`
			}{Key: shown, KeyHidden: shown != key}
			for _, r := range recs {
				out.Records = append(out.Records, l.view(r))
			}
			return l.writeJSON(out)
		}
		for i, r := range recs {
			if i > 0 {
				fmt.Fprintln(l.out)
			}
			what := "earlier"
			if r.State.Active() {
				what = "active"
			}
			fmt.Fprintf(l.out, "record %d of %d (%s, newest first)\n", i+1, len(recs), what)
			l.writeRecord(l.out, r)
		}
		return nil
	}
}

// current returns key's active record, or an error with the exit code
// that says why there is none.
func (l *ledger) current(ctx context.Context, op, key string) (idempotency.Record, error) {
	shown, _ := showKey(key, l.showKeys)
	recs, err := l.store.Lookup(ctx, []string{key})
	if err != nil {
		return idempotency.Record{}, fail(exitFailure, "%s: %v", op, err)
	}
	if rec, ok := recs[key]; ok {
		return rec, nil
	}
	hist, err := l.store.History(ctx, key)
	if err != nil {
		return idempotency.Record{}, fail(exitFailure, "%s: %v", op, err)
	}
	if len(hist) == 0 {
		return idempotency.Record{}, fail(exitNotFound, "%s: no record for key %s", op, shown)
	}
	return idempotency.Record{}, fail(exitNotFound, "%s: key %s has no active record (its latest is %s): nothing to %s",
		op, shown, hist[0].State, op)
}

func settleCmd(fs *flag.FlagSet, _ *options) func(context.Context, *ledger, []string) error {
	status := fs.String("status", "", "applied, skipped or failed (required)")
	result := fs.String("result", "", "the result, as JSON: required for applied (what the provider holds, as the effect's Out encodes it); skipped defaults to null")
	reason := fs.String("reason", "", "why, kept as the record's reason (default: \"settled by hand with effectonce\")")
	token := fs.Int64("token", 0, "settle only if the record's token is still this one (as stuck or show printed it)")
	force := fs.Bool("force", false, "settle even a record a live claim holds")
	return func(ctx context.Context, l *ledger, pos []string) error {
		key := pos[0]
		shown, _ := showKey(key, l.showKeys)
		to := idempotency.State(*status)
		var res []byte
		switch to {
		case idempotency.StateApplied:
			if *result == "" {
				return fail(exitUsage, "settle: --status applied needs --result (the provider's object, as JSON)")
			}
		case idempotency.StateSkipped:
			if *result == "" {
				*result = "null"
			}
		case idempotency.StateFailed:
			if *result != "" {
				return fail(exitUsage, "settle: --status failed takes no --result (a failed record has none)")
			}
		default:
			return fail(exitUsage, "settle: --status %q: want applied, skipped or failed", *status)
		}
		if *result != "" {
			if !json.Valid([]byte(*result)) {
				return fail(exitUsage, "settle: --result is not valid JSON")
			}
			res = []byte(*result)
		}
		if *reason == "" {
			*reason = "settled by hand with effectonce"
		}
		rec, err := l.current(ctx, "settle", key)
		if err != nil {
			return err
		}
		if !rec.State.Pending() {
			return fail(exitChanged, "settle: the record of %s is %s: only pending records are settled (revoke undoes an applied one)", shown, rec.State)
		}
		if *token != 0 && *token != rec.Token {
			return fail(exitChanged, "settle: the record of %s changed since token %d: it is now %s under token %d; nothing was written, look again with 'effectonce show'",
				shown, *token, rec.State, rec.Token)
		}
		got, err := l.store.Settle(ctx, idempotency.SettleRequest{Key: key, Token: rec.Token, State: to, Result: res, Reason: *reason, Force: *force})
		switch {
		case errors.Is(err, idempotency.ErrClaimLive):
			if got.Token == 0 {
				got = rec
			}
			return fail(exitLive, "settle: a live claim holds %s (%s, token %d) until %s: its holder may still succeed; wait for the lease to end, or pass --force if the holder is dead",
				shown, got.State, got.Token, stamp(got.LeaseUntil))
		case errors.Is(err, idempotency.ErrClaimLost):
			return fail(exitChanged, "settle: the record of %s changed while settling (token %d is no longer current, or its state moved); nothing was written, look again with 'effectonce show'",
				shown, rec.Token)
		case err != nil:
			return fail(exitFailure, "settle: %v", err)
		}
		if l.json {
			return l.writeJSON(struct {
				Action string     `json:"action"`
				Forced bool       `json:"forced"`
				Record recordView `json:"record"`
			}{"settle", *force, l.view(got)})
		}
		fmt.Fprintf(l.out, "settled %s: %s -> %s (token %d)\n", shown, got.PrevState, got.State, got.Token)
		if got.State == idempotency.StateFailed {
			fmt.Fprintln(l.out, "the key is free: the next delivery of this intent calls the provider again")
		}
		return nil
	}
}

func revokeCmd(fs *flag.FlagSet, _ *options) func(context.Context, *ledger, []string) error {
	reason := fs.String("reason", "", "why the effect was undone (required), kept as the record's reason")
	return func(ctx context.Context, l *ledger, pos []string) error {
		key := pos[0]
		shown, _ := showKey(key, l.showKeys)
		if strings.TrimSpace(*reason) == "" {
			return fail(exitUsage, "revoke: --reason is required")
		}
		got, err := l.store.Revoke(ctx, key, *reason)
		if errors.Is(err, idempotency.ErrNotFound) {
			rec, cerr := l.current(ctx, "revoke", key)
			if cerr != nil {
				return cerr
			}
			return fail(exitChanged, "revoke: the record of %s is %s: only applied or skipped records are revoked (settle a pending one first)", shown, rec.State)
		}
		if err != nil {
			return fail(exitFailure, "revoke: %v", err)
		}
		if l.json {
			return l.writeJSON(struct {
				Action string     `json:"action"`
				Record recordView `json:"record"`
			}{"revoke", l.view(got)})
		}
		fmt.Fprintf(l.out, "revoked %s: %s -> revoked; the key is free (the result is kept)\n", shown, got.PrevState)
		return nil
	}
}

func migrateCmd(fs *flag.FlagSet, _ *options) func(context.Context, *ledger, []string) error {
	return func(ctx context.Context, l *ledger, _ []string) error {
		from, err := l.version(ctx)
		if err != nil {
			return err
		}
		if err := pgguard.Migrate(ctx, l.conn, l.cfg); err != nil {
			return fail(exitFailure, "%v", err)
		}
		to, err := l.version(ctx)
		if err != nil {
			return err
		}
		if l.json {
			return l.writeJSON(struct {
				Table string `json:"table"`
				From  int    `json:"from"`
				To    int    `json:"to"`
			}{l.name, from, to})
		}
		if from == to {
			fmt.Fprintf(l.out, "ledger %s is up to date (version %d)\n", l.name, to)
			return nil
		}
		fmt.Fprintf(l.out, "migrated ledger %s from version %d to %d\n", l.name, from, to)
		return nil
	}
}

// version is the highest migration recorded for the ledger, 0 for none.
func (l *ledger) version(ctx context.Context) (int, error) {
	migrations := qualified(l.cfg, tableOrDefault(l.cfg)+"_migrations")
	var exists bool
	if err := l.conn.QueryRow(ctx, `SELECT to_regclass($1::text) IS NOT NULL`, migrations).Scan(&exists); err != nil {
		return 0, fail(exitFailure, "migrate: read the version: %v", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := l.conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+migrations).Scan(&v); err != nil {
		return 0, fail(exitFailure, "migrate: read the version: %v", err)
	}
	return v, nil
}

func tableOrDefault(cfg *pgguard.Config) string {
	if cfg.Table == "" {
		return pgguard.DefaultTable
	}
	return cfg.Table
}

func pruneCmd(fs *flag.FlagSet, _ *options) func(context.Context, *ledger, []string) error {
	ns := fs.String("namespace", "", "the key namespace to prune (required)")
	olderThan := fs.String("older-than", "", "delete records last changed longer ago than this (required): a Go duration (36h) or days (30d)")
	dryRun := fs.Bool("dry-run", false, "count what would be deleted; delete nothing")
	batch := fs.Int("batch-size", pgguard.DefaultPruneBatch, "records per DELETE statement")
	return func(ctx context.Context, l *ledger, _ []string) error {
		if *ns == "" {
			return fail(exitUsage, "prune: --namespace is required")
		}
		if *olderThan == "" {
			return fail(exitUsage, "prune: --older-than is required")
		}
		d, err := parseAge(*olderThan)
		if err != nil {
			return fail(exitUsage, "prune: --older-than: %v", err)
		}
		if *batch <= 0 || *batch > pgguard.MaxPruneBatch {
			return fail(exitUsage, "prune: --batch-size must be between 1 and %d", pgguard.MaxPruneBatch)
		}
		res, err := l.store.Prune(ctx, pgguard.PruneRequest{Namespace: *ns, OlderThan: d, BatchSize: *batch, DryRun: *dryRun})
		if err != nil {
			if res.Batches > 0 {
				return fail(exitFailure, "prune: stopped after deleting %d records in %d batches: %v", res.Deleted, res.Batches, err)
			}
			return fail(exitFailure, "%v", err)
		}
		if l.json {
			return l.writeJSON(struct {
				Namespace string    `json:"namespace"`
				Before    time.Time `json:"before"`
				DryRun    bool      `json:"dry_run"`
				Matched   int64     `json:"matched"`
				Deleted   int64     `json:"deleted"`
				Batches   int       `json:"batches"`
			}{*ns, res.Before.UTC(), *dryRun, res.Matched, res.Deleted, res.Batches})
		}
		if *dryRun {
			fmt.Fprintf(l.out, "would delete %d finished records of %s last changed before %s (dry run: nothing deleted)\n",
				res.Matched, *ns, stamp(res.Before))
			return nil
		}
		fmt.Fprintf(l.out, "deleted %d finished records of %s last changed before %s, in %d batches\n",
			res.Deleted, *ns, stamp(res.Before), res.Batches)
		return nil
	}
}

// parseAge reads a positive Go duration, or a whole number of days ("30d").
func parseAge(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return 0, fmt.Errorf("%q: want a duration such as 36h or a number of days such as 30d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q: want a duration such as 36h or a number of days such as 30d", s)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: must be positive", s)
	}
	return d, nil
}
