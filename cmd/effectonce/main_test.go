package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// fixture is a ledger in a fresh schema, reachable by dsn, and a store on
// a fake clock that writes its records. The command reads the database's
// clock, so the fake clock is set relative to the real time.
type fixture struct {
	ctx    context.Context
	dsn    string
	schema string
	pool   *pgxpool.Pool
	store  *pgguard.Store
	clock  *clocktest.Clock
	now    time.Time // the real time when the fixture was made
}

func newFixture(t *testing.T, migrate bool) *fixture {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.ConnString(t)
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	clock := clocktest.New()
	cfg := &pgguard.Config{Now: clock.Now}
	if migrate {
		require.NoError(t, pgguard.Migrate(ctx, pool, cfg))
	}
	store, err := pgguard.New(pool, cfg)
	require.NoError(t, err)
	return &fixture{ctx: ctx, dsn: dsn, schema: u.Query().Get("application_name"), pool: pool, store: store, clock: clock, now: time.Now()}
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs the command in-process with DATABASE_URL set to the fixture's DSN.
func (f *fixture) run(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(f.ctx, args, &out, &errb, func(k string) string {
		if k == "DATABASE_URL" {
			return f.dsn
		}
		return ""
	})
	r := result{code, out.String(), errb.String()}
	t.Logf("effectonce %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

var loyalty = idempotency.KeySpace{Namespace: "loyalty", Version: 1}

func key(t *testing.T, ks idempotency.KeySpace, user string) string {
	t.Helper()
	k, err := ks.Key(idempotency.Str("user", user), idempotency.Int("milestone", 12))
	require.NoError(t, err)
	return k.String()
}

// claim claims key at now+at (the real time shifted) with lease and window.
func (f *fixture) claim(t *testing.T, k string, at, lease, window time.Duration) idempotency.Record {
	t.Helper()
	f.clock.Set(f.now.Add(at))
	ns, _, _ := strings.Cut(k, ":")
	c, err := f.store.Claim(f.ctx, idempotency.ClaimRequest{Key: k, Namespace: ns, Fingerprint: []byte("fp"), Lease: lease, Window: window})
	require.NoError(t, err)
	require.Equal(t, idempotency.VerdictAcquired, c.Verdict, "claim %s", k)
	return c.Record
}

func (f *fixture) change(t *testing.T, c idempotency.Change) idempotency.Record {
	t.Helper()
	rec, err := f.store.Transition(f.ctx, c)
	require.NoError(t, err)
	return rec
}

var replayed500 = idempotency.Attempt{Generation: 1, Class: idempotency.AttemptUnknown, Status: 500,
	RequestID: "req_5xx", Replayed: true, Error: "stripe: api_error (replayed)"}

// park leaves key in doubt, claimed at now+at, with one attempt's evidence.
func (f *fixture) park(t *testing.T, k string, at time.Duration) idempotency.Record {
	t.Helper()
	rec := f.claim(t, k, at, time.Minute, 0)
	c := idempotency.Park(k, rec.Token, "stripe replayed a saved 500", true)
	a := replayed500
	a.At = f.clock.Now()
	c.Evidence = []idempotency.Attempt{a}
	return f.change(t, c)
}

func (f *fixture) lookup(t *testing.T, k string) (idempotency.Record, bool) {
	t.Helper()
	recs, err := f.store.Lookup(f.ctx, []string{k})
	require.NoError(t, err)
	rec, ok := recs[k]
	return rec, ok
}

// ledger holds one record in each situation the tests need.
type ledgerKeys struct {
	inDoubt, expired, unknownPast, live, released, applied, hmac string
}

var secret = idempotency.KeySpace{Namespace: "secretns", Version: 1, Secret: []byte("a stable secret")}

func (f *fixture) populate(t *testing.T) ledgerKeys {
	t.Helper()
	k := ledgerKeys{
		inDoubt: key(t, loyalty, "doubt"), expired: key(t, loyalty, "expired"), unknownPast: key(t, loyalty, "unknown"),
		live: key(t, loyalty, "live"), released: key(t, loyalty, "released"), applied: key(t, loyalty, "applied"),
		hmac: key(t, secret, "u42"),
	}
	// Stuck, oldest first claim first: unknown past its window, the HMAC
	// key in doubt, in doubt, held past its lease.
	rec := f.claim(t, k.unknownPast, -5*time.Hour, time.Minute, time.Hour)
	f.change(t, idempotency.ReleaseUnknown(k.unknownPast, rec.Token, "timeout", 0, true))
	f.park(t, k.hmac, -4*time.Hour)
	f.park(t, k.inDoubt, -3*time.Hour)
	f.claim(t, k.expired, -2*time.Hour, time.Minute, 0)
	// Not stuck.
	f.claim(t, k.live, 0, time.Hour, 0)
	rec = f.claim(t, k.released, -3*time.Hour, time.Minute, 0)
	f.change(t, idempotency.Release(k.released, rec.Token, "429", 0))
	rec = f.claim(t, k.applied, -3*time.Hour, time.Minute, 0)
	f.change(t, idempotency.Complete(k.applied, rec.Token, []byte(`{"id":"promo_1"}`)))
	return k
}

// stuckJSON is the documented shape of "stuck -o json".
type stuckJSON struct {
	Count   int `json:"count"`
	Limit   int `json:"limit"`
	Records []struct {
		Key          string `json:"key"`
		KeyHidden    bool   `json:"key_hidden"`
		Namespace    string `json:"namespace"`
		State        string `json:"state"`
		Active       bool   `json:"active"`
		Stuck        bool   `json:"stuck"`
		StuckBecause string `json:"stuck_because"`
		Token        int64  `json:"token"`
		Claims       int    `json:"claims"`
		AgeSeconds   int64  `json:"age_seconds"`
		Reason       string `json:"reason"`
		Attempts     []struct {
			At        time.Time `json:"at"`
			Gen       int       `json:"gen"`
			Class     string    `json:"class"`
			Status    int       `json:"status"`
			RequestID string    `json:"request_id"`
			Replayed  bool      `json:"replayed"`
			Error     string    `json:"error"`
		} `json:"attempts"`
		FirstClaimedAt time.Time  `json:"first_claimed_at"`
		LeaseUntil     *time.Time `json:"lease_until"`
		DedupUntil     *time.Time `json:"dedup_until"`
	} `json:"records"`
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal([]byte(s), &v), "output: %s", s)
	return v
}

func TestStuckListsRecordsNobodyWillFinish(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	k := f.populate(t)

	r := f.run(t, "stuck")
	require.Equal(t, exitOK, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 5, "a header and four stuck records")
	require.Regexp(t, `^KEY\s+NAMESPACE\s+STATE\s+TOKEN\s+AGE\s+CLAIMS\s+ATTEMPTS\s+REASON$`, lines[0])
	require.Regexp(t, `^`+regexpQuote(k.unknownPast)+`\s+loyalty\s+unknown\s+\d+\s+5h00m\s+1\s+0\s+timeout$`, lines[1])
	require.Regexp(t, `^secretns:<hmac>\s+secretns\s+in_doubt\s+\d+\s+4h00m\s+1\s+1 \(unknown\)\s+stripe replayed a saved 500$`, lines[2])
	require.Regexp(t, `^`+regexpQuote(k.inDoubt)+`\s+loyalty\s+in_doubt\s+\d+\s+3h00m\s+1\s+1 \(unknown\)\s+stripe replayed a saved 500$`, lines[3])
	require.Regexp(t, `^`+regexpQuote(k.expired)+`\s+loyalty\s+calling\s+\d+\s+2h00m\s+1\s+0\s+its holder's lease expired 1h59m ago$`, lines[4])
	for _, notStuck := range []string{k.live, k.released, k.applied} {
		require.NotContains(t, r.stdout, notStuck)
	}
	hexPart := k.hmac[strings.LastIndex(k.hmac, ":")+1:]
	require.NotContains(t, r.stdout, hexPart, "an HMAC key is printed as its namespace only")

	r = f.run(t, "stuck", "--show-keys", "--namespace", "secretns")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, k.hmac)
	require.NotContains(t, r.stdout, k.inDoubt, "--namespace filters")

	r = f.run(t, "stuck", "--namespace", "nothing.here")
	require.Equal(t, exitOK, r.code)
	require.Equal(t, "no stuck records\n", r.stdout)
}

func regexpQuote(s string) string {
	return strings.NewReplacer(`.`, `\.`, `+`, `\+`, `*`, `\*`, `?`, `\?`, `(`, `\(`, `)`, `\)`, `[`, `\[`, `]`, `\]`, `{`, `\{`, `}`, `\}`, `|`, `\|`, `^`, `\^`, `$`, `\$`).Replace(s)
}

func TestStuckJSONHasTheDocumentedShape(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	k := f.populate(t)

	// Flags before the command work as well as after it.
	r := f.run(t, "-o", "json", "stuck", "--limit", "10")
	require.Equal(t, exitOK, r.code, r.stderr)
	got := decode[stuckJSON](t, r.stdout)
	require.Equal(t, 4, got.Count)
	require.Equal(t, 10, got.Limit)
	require.Len(t, got.Records, 4)
	var keys, namespaces []string
	for _, rec := range got.Records {
		keys = append(keys, rec.Key)
		namespaces = append(namespaces, rec.Namespace)
		require.True(t, rec.Stuck)
		require.True(t, rec.Active)
		require.NotEmpty(t, rec.StuckBecause)
	}
	require.Equal(t, []string{"loyalty", "secretns", "loyalty", "loyalty"}, namespaces)
	require.Equal(t, []string{k.unknownPast, "secretns:<hmac>", k.inDoubt, k.expired}, keys)

	hm := got.Records[1]
	require.True(t, hm.KeyHidden)
	require.Equal(t, "secretns", hm.Namespace)
	require.InDelta(t, (4 * time.Hour).Seconds(), float64(hm.AgeSeconds), 120)
	require.Len(t, hm.Attempts, 1)
	a := hm.Attempts[0]
	require.Equal(t, "unknown", a.Class)
	require.Equal(t, 500, a.Status)
	require.Equal(t, "req_5xx", a.RequestID)
	require.True(t, a.Replayed)
	require.Equal(t, 1, a.Gen)

	require.Equal(t, "calling", got.Records[3].State)
	require.NotNil(t, got.Records[3].LeaseUntil)
	require.NotNil(t, got.Records[0].DedupUntil)

	r = f.run(t, "stuck", "-o", "json", "--show-keys")
	require.Equal(t, exitOK, r.code)
	require.Equal(t, k.hmac, decode[stuckJSON](t, r.stdout).Records[1].Key)
	require.False(t, decode[stuckJSON](t, r.stdout).Records[1].KeyHidden)
}

func TestShowPrintsEveryRecordOfTheKeyWithEvidence(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	k := key(t, loyalty, "history")
	rec := f.claim(t, k, -6*time.Hour, time.Minute, 0)
	f.change(t, idempotency.Fail(k, rec.Token, "card declined"))
	parked := f.park(t, k, -1*time.Hour)

	r := f.run(t, "show", k)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "record 1 of 2 (active, newest first)")
	require.Contains(t, r.stdout, "record 2 of 2 (earlier, newest first)")
	for _, want := range []string{
		"key            " + k, "state          in_doubt (was calling)", "token          " + itoa(parked.Token),
		"fingerprint    6670 (sha256 of the payload)", "reason         stripe replayed a saved 500",
		"stuck          in doubt", "state          failed (was calling)", "reason         card declined",
		"lease until", "due at", "dedup until", "first claimed", "updated", "claims", "generation", "result",
	} {
		require.Contains(t, r.stdout, want)
	}
	require.Regexp(t, `AT\s+GEN\s+CLASS\s+STATUS\s+REQUEST ID\s+REPLAYED\s+ERROR`, r.stdout)
	require.Regexp(t, `\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+1\s+unknown\s+500\s+req_5xx\s+yes\s+stripe: api_error \(replayed\)`, r.stdout)
	require.Contains(t, r.stdout, "attempts: none recorded", "the failed record has no evidence")

	r = f.run(t, "show", k, "-o", "json")
	require.Equal(t, exitOK, r.code, r.stderr)
	got := decode[struct {
		Key     string
		Records []map[string]any
	}](t, r.stdout)
	require.Equal(t, k, got.Key)
	require.Len(t, got.Records, 2)
	require.Equal(t, "in_doubt", got.Records[0]["state"])
	require.Equal(t, true, got.Records[0]["active"])
	require.Equal(t, "failed", got.Records[1]["state"])
	require.Equal(t, false, got.Records[1]["active"])
	require.Equal(t, "req_5xx", got.Records[0]["attempts"].([]any)[0].(map[string]any)["request_id"])

	r = f.run(t, "show", key(t, loyalty, "nobody"))
	require.Equal(t, exitNotFound, r.code)
	require.Contains(t, r.stderr, "no record for key")

	hk := key(t, secret, "u7")
	f.park(t, hk, -time.Hour)
	r = f.run(t, "show", hk)
	require.Equal(t, exitOK, r.code)
	require.Contains(t, r.stdout, "secretns:<hmac>")
	require.NotContains(t, r.stdout, hk)
	r = f.run(t, "show", hk, "--show-keys")
	require.Contains(t, r.stdout, hk)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestSettleRefusesALiveClaimUnlessForced(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	k := f.populate(t)
	before, ok := f.lookup(t, k.live)
	require.True(t, ok)

	r := f.run(t, "settle", k.live, "--status", "failed")
	require.Equal(t, exitLive, r.code)
	require.Contains(t, r.stderr, "a live claim holds")
	require.Contains(t, r.stderr, "--force")
	require.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line")
	after, _ := f.lookup(t, k.live)
	require.Equal(t, before, after, "nothing was written")

	r = f.run(t, "settle", k.live, "--status", "applied", "--result", `{"id":"promo_9"}`, "--force", "--reason", "found it in the dashboard")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "settled "+k.live+": calling -> applied (token "+itoa(before.Token)+")")
	after, _ = f.lookup(t, k.live)
	require.Equal(t, idempotency.StateApplied, after.State)
	require.JSONEq(t, `{"id":"promo_9"}`, string(after.Result))
	require.Equal(t, "found it in the dashboard", after.Reason)

	// The live holder's late completion is refused.
	_, err := f.store.Transition(f.ctx, idempotency.Complete(k.live, before.Token, []byte(`{"id":"late"}`)))
	require.ErrorIs(t, err, idempotency.ErrClaimLost)
}

func TestSettleIsFencedByTheTokenItSaw(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	k := f.populate(t)

	r := f.run(t, "stuck", "-o", "json")
	require.Equal(t, exitOK, r.code)
	seen := decode[stuckJSON](t, r.stdout).Records[3]
	require.Equal(t, k.expired, seen.Key)

	// Meanwhile a worker takes the expired claim over: a new token.
	f.clock.Set(f.now.Add(-time.Hour))
	c, err := f.store.Claim(f.ctx, idempotency.ClaimRequest{Key: k.expired, Namespace: "loyalty", Fingerprint: []byte("fp"),
		Lease: time.Minute, TakeOver: true})
	require.NoError(t, err)
	require.Equal(t, idempotency.VerdictAcquired, c.Verdict)
	require.NotEqual(t, seen.Token, c.Record.Token)

	r = f.run(t, "settle", k.expired, "--status", "failed", "--token", itoa(seen.Token))
	require.Equal(t, exitChanged, r.code)
	require.Contains(t, r.stderr, "changed since token "+itoa(seen.Token))
	now, _ := f.lookup(t, k.expired)
	require.Equal(t, c.Record, now, "nothing was written")

	// With the current token it goes through.
	r = f.run(t, "settle", k.expired, "--status", "failed", "--token", itoa(c.Record.Token))
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "the key is free")
}

func TestSettleFailedFreesTheKeyAndRefusesWhatItCannotSettle(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	k := f.populate(t)

	r := f.run(t, "settle", k.inDoubt, "--status", "failed", "-o", "json")
	require.Equal(t, exitOK, r.code, r.stderr)
	got := decode[struct {
		Action string
		Record struct {
			State     string `json:"state"`
			PrevState string `json:"prev_state"`
		}
	}](t, r.stdout)
	require.Equal(t, "settle", got.Action)
	require.Equal(t, "failed", got.Record.State)
	require.Equal(t, "in_doubt", got.Record.PrevState)
	_, ok := f.lookup(t, k.inDoubt)
	require.False(t, ok, "a failed record is not active")
	f.claim(t, k.inDoubt, 0, time.Minute, 0) // the key is free

	r = f.run(t, "settle", k.applied, "--status", "failed")
	require.Equal(t, exitChanged, r.code)
	require.Contains(t, r.stderr, "is applied: only pending records are settled")

	r = f.run(t, "settle", key(t, loyalty, "nobody"), "--status", "failed")
	require.Equal(t, exitNotFound, r.code)

	r = f.run(t, "settle", k.unknownPast, "--status", "skipped")
	require.Equal(t, exitOK, r.code, r.stderr)
	rec, _ := f.lookup(t, k.unknownPast)
	require.Equal(t, idempotency.StateSkipped, rec.State)
	require.Equal(t, "null", string(rec.Result), "skipped defaults to a JSON null result")

	for _, args := range [][]string{
		{"settle", k.expired, "--status", "applied"},                          // no result
		{"settle", k.expired, "--status", "applied", "--result", "{not json"}, // bad JSON
		{"settle", k.expired, "--status", "failed", "--result", "{}"},         // failed has none
		{"settle", k.expired, "--status", "done"},                             // unknown status
		{"settle", k.expired},                                                 // no status
		{"settle", "--status", "failed"},                                      // no key
		{"settle", k.expired, k.inDoubt, "--status", "failed"},                // two keys
	} {
		r = f.run(t, args...)
		require.Equal(t, exitUsage, r.code, "%q", args)
	}
	rec, _ = f.lookup(t, k.expired)
	require.Equal(t, idempotency.StateCalling, rec.State, "usage errors write nothing")
}

func TestRevokeFreesTheKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	k := f.populate(t)

	r := f.run(t, "revoke", k.applied)
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, "--reason is required")

	r = f.run(t, "revoke", k.applied, "--reason", "code deactivated by support")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, "revoked "+k.applied+": applied -> revoked; the key is free (the result is kept)\n", r.stdout)
	hist, err := f.store.History(f.ctx, k.applied)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateRevoked, hist[0].State)
	require.Equal(t, "code deactivated by support", hist[0].Reason)
	require.JSONEq(t, `{"id":"promo_1"}`, string(hist[0].Result))
	f.claim(t, k.applied, 0, time.Minute, 0) // the key is free

	r = f.run(t, "revoke", k.inDoubt, "--reason", "x")
	require.Equal(t, exitChanged, r.code)
	require.Contains(t, r.stderr, "is in_doubt: only applied or skipped records are revoked")

	r = f.run(t, "revoke", key(t, loyalty, "nobody"), "--reason", "x")
	require.Equal(t, exitNotFound, r.code)
}

func TestMigrateCreatesTheLedgerOnceAndStuckNeedsIt(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)

	r := f.run(t, "stuck")
	require.Equal(t, exitFailure, r.code)
	require.Equal(t, `effectonce: ledger table "effect_ledger" not found on the search_path (`+f.schema+
		`): check --schema and --table, or create it with 'effectonce migrate'`+"\n", r.stderr)

	r = f.run(t, "migrate")
	require.Equal(t, exitOK, r.code, r.stderr)
	latest := latestMigration(t)
	require.Equal(t, fmt.Sprintf("migrated ledger \"effect_ledger\" from version 0 to %d\n", latest), r.stdout)
	r = f.run(t, "migrate")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, fmt.Sprintf("ledger \"effect_ledger\" is up to date (version %d)\n", latest), r.stdout)
	r = f.run(t, "migrate", "-o", "json")
	require.Equal(t, exitOK, r.code)
	require.JSONEq(t, fmt.Sprintf(`{"table":"\"effect_ledger\"","from":%d,"to":%d}`, latest, latest), r.stdout)

	r = f.run(t, "stuck")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, "no stuck records\n", r.stdout)

	// Another table, named with its schema.
	r = f.run(t, "migrate", "--schema", f.schema, "--table", "ops_ledger")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, fmt.Sprintf(`"%s"."ops_ledger" from version 0 to %d`, f.schema, latestMigration(t)))
	r = f.run(t, "stuck", "--schema", f.schema, "--table", "ops_ledger", "-o", "json")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, 0, decode[stuckJSON](t, r.stdout).Count)
}

func TestPruneDeletesOldFinishedRecordsAndItsDryRunNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	finish := func(user string, at time.Duration, fail bool) string {
		k := key(t, loyalty, user)
		rec := f.claim(t, k, at, time.Minute, 0)
		if fail {
			f.change(t, idempotency.Fail(k, rec.Token, "declined"))
		} else {
			f.change(t, idempotency.Complete(k, rec.Token, []byte(`{}`)))
		}
		return k
	}
	finish("old1", -10*24*time.Hour, false)
	finish("old2", -9*24*time.Hour, true)
	young := finish("young", -time.Hour, false)
	pending := key(t, loyalty, "pending")
	f.park(t, pending, -30*24*time.Hour)
	count := func() int {
		var n int
		require.NoError(t, f.pool.QueryRow(f.ctx, `SELECT count(*) FROM effect_ledger`).Scan(&n))
		return n
	}

	r := f.run(t, "prune", "--namespace", "loyalty", "--older-than", "7d", "--dry-run")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Regexp(t, `^would delete 2 finished records of loyalty last changed before \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(dry run: nothing deleted\)\n$`, r.stdout)
	require.Equal(t, 4, count())

	r = f.run(t, "prune", "--namespace", "loyalty", "--older-than", "168h", "--batch-size", "1", "-o", "json")
	require.Equal(t, exitOK, r.code, r.stderr)
	got := decode[struct {
		Namespace string    `json:"namespace"`
		Before    time.Time `json:"before"`
		DryRun    bool      `json:"dry_run"`
		Deleted   int64     `json:"deleted"`
		Batches   int       `json:"batches"`
	}](t, r.stdout)
	require.Equal(t, "loyalty", got.Namespace)
	require.Equal(t, int64(2), got.Deleted)
	require.Equal(t, 3, got.Batches, "batches of one: two full, one empty")
	require.WithinDuration(t, time.Now().Add(-7*24*time.Hour), got.Before, time.Minute)
	require.Equal(t, 2, count())
	_, ok := f.lookup(t, young)
	require.True(t, ok, "a young record stays")
	_, ok = f.lookup(t, pending)
	require.True(t, ok, "a pending record stays, however old")

	for _, args := range [][]string{
		{"prune", "--older-than", "7d"},
		{"prune", "--namespace", "loyalty"},
		{"prune", "--namespace", "loyalty", "--older-than", "-1h"},
		{"prune", "--namespace", "loyalty", "--older-than", "0s"},
		{"prune", "--namespace", "loyalty", "--older-than", "7x"},
		{"prune", "--namespace", "loyalty", "--older-than", "7d", "--batch-size", "0"},
	} {
		r = f.run(t, args...)
		require.Equal(t, exitUsage, r.code, "%q", args)
	}
	require.Equal(t, 2, count())
}

func TestBadDSNOrTableIsOneLineAndExitCode(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	for _, tc := range []struct {
		name string
		args []string
		env  string
		code int
		want string
	}{
		{"unreachable server", []string{"stuck", "--dsn", "postgres://postgres@127.0.0.1:1/test?connect_timeout=5"}, "",
			exitFailure, "effectonce: cannot connect to the database (DSN from --dsn): "},
		{"malformed DSN, its password not printed", []string{"stuck"}, "postgres://u:hunter2@host:badport/db",
			exitFailure, "effectonce: invalid DSN in DATABASE_URL: cannot parse `postgres://u:xxxxx@host:badport/db`: invalid port"},
		{"no DSN", []string{"stuck"}, "-", exitUsage, "effectonce: no database: pass --dsn or set DATABASE_URL"},
		{"missing table", []string{"show", "k", "--table", "nope"}, "", exitFailure,
			`effectonce: ledger table "nope" not found on the search_path (` + f.schema + `)`},
		{"missing schema", []string{"stuck", "--schema", "nowhere"}, "", exitFailure,
			`effectonce: ledger table "nowhere"."effect_ledger" not found: check --schema and --table`},
		{"invalid table name", []string{"stuck", "--table", strings.Repeat("t", 60)}, "", exitUsage,
			"effectonce: pgguard: invalid identifier Config.Table"},
		{"unknown command", []string{"frobnicate"}, "", exitUsage, `effectonce: unknown command "frobnicate"`},
		{"unknown flag", []string{"stuck", "--frob"}, "", exitUsage, "effectonce: stuck: flag provided but not defined: -frob"},
		{"bad output", []string{"stuck", "-o", "yaml"}, "", exitUsage, `effectonce: -o "yaml": want text or json`},
		{"extra argument", []string{"stuck", "now"}, "", exitUsage, `effectonce: stuck takes no arguments`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			env := f.dsn
			switch tc.env {
			case "-":
				env = ""
			case "":
			default:
				env = tc.env
			}
			code := run(f.ctx, tc.args, &out, &errb, func(k string) string {
				if k == "DATABASE_URL" {
					return env
				}
				return ""
			})
			require.Equal(t, tc.code, code, "stderr: %s", errb.String())
			require.True(t, strings.HasPrefix(errb.String(), tc.want), "stderr %q, want a line starting with %q", errb.String(), tc.want)
			lines := strings.Split(strings.TrimSuffix(errb.String(), "\n"), "\n")
			if tc.code == exitUsage {
				require.Len(t, lines, 2, "the error and a pointer to help")
			} else {
				require.Len(t, lines, 1, "one line")
			}
			require.NotContains(t, errb.String(), "hunter2")
			require.NotContains(t, errb.String(), "goroutine")
		})
	}
}

func TestHelpExitsZeroAndListsTheExitCodes(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"help"}, {"-h"}, {"help", "settle"}, {"settle", "-h"}, {"prune", "--help"}} {
		var out, errb bytes.Buffer
		code := run(context.Background(), args, &out, &errb, func(string) string { return "" })
		require.Equal(t, exitOK, code, "%q: %s", args, errb.String())
		require.Contains(t, out.String(), "3  settle refused: a live claim holds the record", "%q", args)
		require.Empty(t, errb.String())
	}
	var out, errb bytes.Buffer
	require.Equal(t, exitUsage, run(context.Background(), nil, &out, &errb, func(string) string { return "" }))
	require.Contains(t, out.String(), "Commands:")
}

// TestBinary builds the real command once and runs it, to prove main's
// wiring: arguments, environment, output and exit code.
func TestBinary(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	k := f.populate(t)
	bin := filepath.Join(t.TempDir(), "effectonce")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	cmd := exec.Command(bin, "stuck", "-o", "json")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+f.dsn)
	stdout, err := cmd.Output()
	require.NoError(t, err)
	require.Equal(t, 4, decode[stuckJSON](t, string(stdout)).Count)

	cmd = exec.Command(bin, "settle", k.live, "--status", "failed")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+f.dsn)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exitErr *exec.ExitError
	require.True(t, errors.As(err, &exitErr), "%v", err)
	require.Equal(t, exitLive, exitErr.ExitCode())
	require.Contains(t, stderr.String(), "a live claim holds")
}

// latestMigration is the version Migrate brings a ledger to: the number of
// pgguard's embedded up migrations.
func latestMigration(t *testing.T) int {
	t.Helper()
	ups, err := fs.Glob(pgguard.Migrations, "*.up.sql")
	require.NoError(t, err)
	require.NotEmpty(t, ups)
	return len(ups)
}
