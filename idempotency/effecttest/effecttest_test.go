package effecttest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/idempotency/effecttest"
)

// recorder is a fake TB: it captures failures instead of failing the test,
// so these tests can show that effecttest fails on broken effects, and it
// captures logs (still shown with -v).
type recorder struct {
	t    *testing.T
	mu   sync.Mutex
	errs []string
	logs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) Logf(format string, args ...any) {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
	r.t.Logf(format, args...)
}

func (r *recorder) failures() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errs, "\n")
}

func (r *recorder) log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.logs, "\n")
}

type transfer struct {
	ID     string
	Amount int64
}

// receiver is a fake provider; dedup selects whether it honours keys. It
// counts distinct objects created, and can find them by business key.
type receiver struct {
	mu      sync.Mutex
	dedup   bool
	seen    map[string]string // provider key -> object (dedup only)
	byBase  map[string]string // business key -> object, for Find
	effects int
}

func newReceiver(dedup bool) *receiver {
	return &receiver{dedup: dedup, seen: map[string]string{}, byBase: map[string]string{}}
}

func (p *receiver) call(_ context.Context, k idempotency.Key, _ transfer) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if id, ok := p.seen[k.String()]; ok && p.dedup {
		return id, nil
	}
	p.effects++
	id := fmt.Sprintf("tr_%d", p.effects)
	p.seen[k.String()] = id
	p.byBase[k.Base().String()] = id
	return id, nil
}

func (p *receiver) find(_ context.Context, k idempotency.Key, _ transfer) (string, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.byBase[k.String()]
	return id, ok, nil
}

func (p *receiver) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.effects
}

var keys = idempotency.KeySpace{Namespace: "payouts.transfer"}

func goodEffect(p *receiver) *idempotency.Effect[transfer, string] {
	return &idempotency.Effect[transfer, string]{
		Name:        "payouts.transfer",
		Key:         func(in transfer) (idempotency.Key, error) { return keys.Key(idempotency.Str("transfer", in.ID)) },
		Fingerprint: func(in transfer) ([]byte, error) { return idempotency.FingerprintJSON(in.Amount) },
		Call:        p.call,
		Expired:     idempotency.ExpiredRetry,
	}
}

func inputs() []transfer {
	var out []transfer
	for i := range 6 {
		out = append(out, transfer{ID: fmt.Sprintf("t%d", i), Amount: int64(100 + i)})
	}
	return out
}

func memStore(now func() time.Time) idempotency.Store {
	return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now})
}

// baseCase is a Case for eff against p, with everything a correct team
// sets; opts adjust it.
func baseCase(eff *idempotency.Effect[transfer, string], p *receiver) effecttest.Case[transfer, string] {
	return effecttest.Case[transfer, string]{
		Effect:   eff,
		Inputs:   inputs(),
		Mutate:   func(in transfer) transfer { in.Amount += 1000; return in },
		NewStore: memStore,
		Effects:  p.count,
	}
}

func run(t *testing.T, c effecttest.Case[transfer, string]) (*recorder, bool) {
	rec := &recorder{t: t}
	return rec, effecttest.Run(rec, c)
}

func check(t *testing.T, eff *idempotency.Effect[transfer, string], p *receiver) (*recorder, bool) {
	return run(t, baseCase(eff, p))
}

func TestPassesACorrectEffect(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	rec, ok := check(t, goodEffect(p), p)
	require.True(t, ok, rec.failures())
	require.Empty(t, rec.errs)
	require.Equal(t, 6, p.count())
}

func TestLogsEachCaseAndWhatItSaw(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	rec, ok := check(t, goodEffect(p), p)
	require.True(t, ok, rec.failures())
	log := rec.log()
	for _, want := range []string{
		"effecttest: payouts.transfer: keys: 6 inputs, 6 distinct keys",
		"two deliveries in a row: applied (1 call), then already_applied (0 calls)",
		"two deliveries in a row: provider effects 1 for 1 intents",
		"concurrent deliveries: 16 at once: applied 1",
		"concurrent deliveries: provider effects 2 for 2 intents",
		"crash between the provider call and the record: the first delivery called the provider 1 time(s) and died before its record (error)",
		"crash between the provider call and the record: redelivered inside the lease: in_flight (0 calls)",
		"applied by a takeover under the same key (1 call), the provider replayed: recovered automatically",
		"crash between the provider call and the record: provider effects 3 for 3 intents",
		"retryable failure then success: injected a not-acted failure: retryable",
		"same key, different payload: mismatch, *MismatchError (stored record applied), 0 calls",
		"two overlapping sweeps: over 6 intents (2 new)",
		"two overlapping sweeps: provider effects 6 for 6 intents",
		"stored results: 6 of 6 intents applied or skipped",
		"passed: 6 intents, 6 effects at the provider",
	} {
		require.Contains(t, log, want)
	}
}

func TestFailsAClockDerivedKey(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	eff := goodEffect(p)
	eff.Key = func(in transfer) (idempotency.Key, error) {
		//effectoncevet:ignore the contract test must see a clock-derived key to prove it fails on one
		return keys.Key(idempotency.Str("transfer", in.ID), idempotency.Int("bucket", time.Now().UnixNano()))
	}
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.failures(), "must depend only on business identity")
}

func TestFailsAKeyMissingTheBusinessIdentity(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	eff := goodEffect(p)
	eff.Key = func(in transfer) (idempotency.Key, error) { return keys.Key(idempotency.Str("kind", "transfer")) }
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.failures(), "have the same key")
}

func TestFailsAnEffectThatDoesNotSendTheKey(t *testing.T) {
	t.Parallel()
	// The provider deduplicates, but the call sends a fresh key each time,
	// as stripe-go does when none is set: the takeover after a crash
	// creates a second object.
	p := newReceiver(true)
	eff := goodEffect(p)
	var n int
	var mu sync.Mutex
	eff.Call = func(ctx context.Context, k idempotency.Key, in transfer) (string, error) {
		mu.Lock()
		n++
		fresh := keys.MustKey(idempotency.Str("random", fmt.Sprint(n)))
		mu.Unlock()
		return p.call(ctx, fresh, in)
	}
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.failures(), "crash between the provider call and the record: the provider performed 4 effects for 3 intents")
	require.Contains(t, rec.failures(), "must send the key as the provider's idempotency key")
}

func TestFailsAnEffectThatIgnoresTheClaim(t *testing.T) {
	t.Parallel()
	// An effect that calls the provider on its own in Key (a "pre-flight"
	// that writes), bypassing the claim.
	p := newReceiver(false)
	eff := goodEffect(p)
	eff.Key = func(in transfer) (idempotency.Key, error) {
		k, err := keys.Key(idempotency.Str("transfer", in.ID))
		if err == nil {
			_, _ = p.call(context.Background(), k, in)
		}
		return k, err
	}
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.failures(), "each intent must happen exactly once")
}

func TestFailsAFingerprintThatMissesThePayload(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	eff := goodEffect(p)
	eff.Fingerprint = func(in transfer) ([]byte, error) { return []byte(in.ID), nil }
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.failures(), "same fingerprint")
}

func TestFailsWhenTheMismatchCaseCannotRun(t *testing.T) {
	t.Parallel()
	t.Run("FailsWithoutMutateForAFingerprint", func(t *testing.T) {
		t.Parallel()
		p := newReceiver(true)
		c := baseCase(goodEffect(p), p)
		c.Mutate = nil
		rec, ok := run(t, c)
		require.False(t, ok)
		require.Contains(t, rec.failures(), "the effect has a Fingerprint and the Case has no Mutate")
	})
	t.Run("PassesWithAnExplicitOptOut", func(t *testing.T) {
		t.Parallel()
		p := newReceiver(true)
		c := baseCase(goodEffect(p), p)
		c.Mutate, c.SkipMismatch = nil, "the payload is read from the order at call time"
		rec, ok := run(t, c)
		require.True(t, ok, rec.failures())
		require.Contains(t, rec.log(), "same key, different payload: skipped: the payload is read from the order at call time")
	})
	t.Run("SkipsWithALogWithoutAFingerprint", func(t *testing.T) {
		t.Parallel()
		p := newReceiver(true)
		eff := goodEffect(p)
		eff.Fingerprint = nil
		c := baseCase(eff, p)
		c.Mutate = nil
		rec, ok := run(t, c)
		require.True(t, ok, rec.failures())
		require.Contains(t, rec.log(), "same key, different payload: skipped: the effect has no Fingerprint")
	})
	t.Run("RejectsMutateTogetherWithSkipMismatch", func(t *testing.T) {
		t.Parallel()
		p := newReceiver(true)
		c := baseCase(goodEffect(p), p)
		c.SkipMismatch = "both"
		rec, ok := run(t, c)
		require.False(t, ok)
		require.Contains(t, rec.failures(), "both Mutate and SkipMismatch")
		require.Zero(t, p.count(), "nothing ran")
	})
}

// The provider ignores keys and the effect cannot ask it (no Find): a crash
// after the call leaves the intent in doubt, for an operator.
func TestFailsAnEffectThatLeavesEveryCrashToAnOperator(t *testing.T) {
	t.Parallel()
	for _, policy := range []idempotency.ExpiredPolicy{idempotency.ExpiredPark, idempotency.ExpiredRetryUncalled} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			p := newReceiver(false)
			eff := goodEffect(p)
			eff.Expired = policy
			rec, ok := check(t, eff, p)
			require.False(t, ok)
			require.Contains(t, rec.failures(), "the intent is left in doubt for an operator")
			require.Contains(t, rec.failures(), "CrashRecovery: effecttest.ParkForOperator")
			require.Equal(t, 6, p.count(), "and never a second effect")
		})
	}
}

func TestPassesAParkingEffectWithParkForOperator(t *testing.T) {
	t.Parallel()
	for _, policy := range []idempotency.ExpiredPolicy{idempotency.ExpiredPark, idempotency.ExpiredRetryUncalled} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			p := newReceiver(false)
			eff := goodEffect(p)
			eff.Expired = policy
			c := baseCase(eff, p)
			c.CrashRecovery = effecttest.ParkForOperator
			rec, ok := run(t, c)
			require.True(t, ok, rec.failures())
			require.Contains(t, rec.log(), "after the lease: needs_reconciliation with no call: parked for an operator")
			require.Contains(t, rec.log(), "accepted (ParkForOperator): listed by Operator.ListStuck (calling, 1 claims), settled applied by hand, then already_applied with no call")
			require.Contains(t, rec.log(), "stored results: 6 of 6 intents applied or skipped")
			require.Equal(t, 6, p.count())
		})
	}
}

// notOperator hides the MemStore's Operator methods.
type notOperator struct{ idempotency.Store }

func TestParkForOperatorOnAStoreWithoutOperator(t *testing.T) {
	t.Parallel()
	p := newReceiver(false)
	eff := goodEffect(p)
	eff.Expired = idempotency.ExpiredPark
	c := baseCase(eff, p)
	c.CrashRecovery = effecttest.ParkForOperator
	c.NewStore = func(now func() time.Time) idempotency.Store { return notOperator{memStore(now)} }
	rec, ok := run(t, c)
	require.True(t, ok, rec.failures())
	require.Contains(t, rec.log(), "the store is not an idempotency.Operator")
	require.Contains(t, rec.log(), "stored results: 5 of 6 intents applied or skipped")
}

func TestPassesAParkingEffectWithFind(t *testing.T) {
	t.Parallel()
	for _, policy := range []idempotency.ExpiredPolicy{idempotency.ExpiredPark, idempotency.ExpiredRetryUncalled} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			p := newReceiver(false)
			eff := goodEffect(p)
			eff.Expired, eff.Find = policy, p.find
			rec, ok := check(t, eff, p)
			require.True(t, ok, rec.failures())
			require.Contains(t, rec.log(), "after the lease: reconciled: Find found the first effect at the provider, recorded with 0 calls: recovered automatically")
			require.Equal(t, 6, p.count())
		})
	}
}

func TestFailsAFindThatMissesTheEffect(t *testing.T) {
	t.Parallel()
	p := newReceiver(false)
	eff := goodEffect(p)
	eff.Expired = idempotency.ExpiredPark
	eff.Find = func(context.Context, idempotency.Key, transfer) (string, bool, error) { return "", false, nil }
	rec, ok := check(t, eff, p)
	require.False(t, ok)
	require.Contains(t, rec.failures(), "crash between the provider call and the record: the provider performed 4 effects for 3 intents")
	require.Contains(t, rec.failures(), "Find did not find the effect the crashed worker had made")
}

func TestLogsThatParkForOperatorIsNotNeeded(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	c := baseCase(goodEffect(p), p)
	c.CrashRecovery = effecttest.ParkForOperator
	rec, ok := run(t, c)
	require.True(t, ok, rec.failures())
	require.Contains(t, rec.log(), "CrashRecovery is ParkForOperator but the effect recovers by itself")
}

// keyedReceiver is an HTTP receiver that deduplicates by Idempotency-Key,
// as an email API does: a repeated key is answered with the first answer.
type keyedReceiver struct {
	mu   sync.Mutex
	hits int
	sent map[string]string // key -> message id
	srv  *httptest.Server
}

func newKeyedReceiver(t *testing.T) *keyedReceiver {
	k := &keyedReceiver{sent: map[string]string{}}
	k.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k.mu.Lock()
		defer k.mu.Unlock()
		k.hits++
		key := r.Header.Get("Idempotency-Key")
		id, ok := k.sent[key]
		if !ok {
			id = fmt.Sprintf("msg_%d", len(k.sent)+1)
			k.sent[key] = id
		}
		_, _ = io.WriteString(w, id)
	}))
	t.Cleanup(k.srv.Close)
	return k
}

func (k *keyedReceiver) distinctKeys() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.sent)
}

func (k *keyedReceiver) requests() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.hits
}

func (k *keyedReceiver) effect() *idempotency.Effect[transfer, string] {
	return &idempotency.Effect[transfer, string]{
		Name:        "payouts.notice",
		Key:         func(in transfer) (idempotency.Key, error) { return keys.Key(idempotency.Str("transfer", in.ID)) },
		Fingerprint: func(in transfer) ([]byte, error) { return idempotency.FingerprintJSON(in.Amount) },
		Call: func(ctx context.Context, key idempotency.Key, in transfer) (string, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, k.srv.URL, nil)
			if err != nil {
				return "", idempotency.Permanent(err)
			}
			req.Header.Set("Idempotency-Key", key.String())
			resp, err := k.srv.Client().Do(req)
			if err != nil {
				return "", idempotency.Unknown(err, 0)
			}
			defer func() { _ = resp.Body.Close() }()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return "", idempotency.Unknown(err, 0)
			}
			return string(b), nil
		},
		Expired:     idempotency.ExpiredRetry,
		DedupWindow: 24 * time.Hour,
	}
}

func TestPassesADeduplicatingReceiverCountedByDistinctKeys(t *testing.T) {
	t.Parallel()
	k := newKeyedReceiver(t)
	rec, ok := run(t, effecttest.Case[transfer, string]{
		Effect:   k.effect(),
		Inputs:   inputs(),
		Mutate:   func(in transfer) transfer { in.Amount++; return in },
		NewStore: memStore,
		Effects:  k.distinctKeys,
	})
	require.True(t, ok, rec.failures())
	require.Contains(t, rec.log(), "applied by a takeover under the same key (1 call), the provider replayed: recovered automatically")
	require.Equal(t, 6, k.distinctKeys())
	require.Equal(t, 7, k.requests(), "the replay after the crash hit the receiver again")
}

// Counting requests at a receiver that deduplicates reports the replay as
// a second effect; the failure says to count distinct effects.
func TestCountingRequestsAtADeduplicatingReceiverSaysToCountDistinctEffects(t *testing.T) {
	t.Parallel()
	k := newKeyedReceiver(t)
	rec, ok := run(t, effecttest.Case[transfer, string]{
		Effect:   k.effect(),
		Inputs:   inputs(),
		Mutate:   func(in transfer) transfer { in.Amount++; return in },
		NewStore: memStore,
		Effects:  k.requests,
	})
	require.False(t, ok)
	require.Contains(t, rec.failures(), "4 effects for 3 intents")
	require.Contains(t, rec.failures(), "Effects must count distinct effects, not requests")
}

// The executor must read the store's fake clock, and the crash case must
// move it past the lease the executor really uses (Config.Lease here).
func TestTheExecutorSharesTheStoresClockAndLease(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	clock := clocktest.New()
	var store *idempotency.MemStore
	c := baseCase(goodEffect(p), p)
	c.Clock = clock
	c.Config = &idempotency.Config{Lease: time.Hour, Now: time.Now}
	c.NewStore = func(now func() time.Time) idempotency.Store {
		store = idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now})
		return store
	}
	rec, ok := run(t, c)
	require.True(t, ok, rec.failures())
	require.Equal(t, clocktest.Start.Add(time.Hour+time.Second), clock.Now(), "the crash case waited out the executor's lease on the given clock")

	k, _, err := goodEffect(p).Identity(inputs()[0])
	require.NoError(t, err)
	recs, err := store.Lookup(context.Background(), []string{k.String()})
	require.NoError(t, err)
	require.NotEmpty(t, recs[k.String()].Evidence)
	require.Equal(t, clocktest.Start, recs[k.String()].Evidence[0].At, "the executor stamps attempts with the fake clock, not Config.Now")
}

func TestRejectsTooFewInputs(t *testing.T) {
	t.Parallel()
	p := newReceiver(true)
	c := baseCase(goodEffect(p), p)
	c.Inputs = inputs()[:2]
	rec, ok := run(t, c)
	require.False(t, ok)
	require.Contains(t, rec.failures(), "at least 4")
}
