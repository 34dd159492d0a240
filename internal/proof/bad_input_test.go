package proof

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

// Bad input on real PostgreSQL: each is a typed error matched with
// errors.Is or errors.As, and nothing is half-written: the ledger table is
// read back afterwards, and the fake Stripe's counters show what was sent.

// requireNothingSent checks that no request reached Stripe.
func requireNothingSent(t *testing.T, fake *stripefake.Server) {
	t.Helper()
	require.Zero(t, fake.RequestCount(), "requests that reached Stripe")
	require.Zero(t, fake.CreatedObjects())
}

// TestBadInputKeyParts: an empty key part and a part that is not valid
// UTF-8 are refused when the key is built, before the store or Stripe is
// touched (*KeyError wrapping ErrInvalidKey and the specific sentinel).
func TestBadInputKeyParts(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	eff := r.effect(attempts(1), 0)
	for _, tc := range []struct {
		name string
		id   string
		want error
	}{
		{"empty_part", "", idempotency.ErrEmptyPart},
		{"invalid_utf8", "i\xff\xfe", idempotency.ErrInvalidUTF8},
	} {
		res, err := r.run(eff, intent{ID: tc.id, Customer: "cus_bad"})
		require.ErrorIs(t, err, tc.want, tc.name)
		require.ErrorIs(t, err, idempotency.ErrInvalidKey, tc.name)
		var ke *idempotency.KeyError
		require.ErrorAs(t, err, &ke, tc.name)
		require.Equal(t, "intent", ke.Part, tc.name)
		require.Equal(t, idempotency.OutcomeInvalid, res.Outcome, "refused before the store: %s", tc.name)
		require.Zero(t, res.Calls)
	}
	require.Zero(t, r.tableRows(), "no ledger row")
	requireNothingSent(t, r.fake)
}

// TestBadInputOversizedKeyParts: parts far longer than Stripe's 255-byte
// Idempotency-Key limit are not an error. The key keeps a readable prefix
// and ends in "~" and a hash of the whole canonical key, exactly 255 bytes,
// ASCII; Stripe accepts it, the ledger stores it, a rerun finds it. Two
// parts that differ only after the cut get different keys and one code
// each.
func TestBadInputOversizedKeyParts(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	long := strings.Repeat("a", 1000)
	ins := []intent{
		{ID: long + "1", Customer: "cus_long1"},
		{ID: long + "2", Customer: "cus_long2"},
		{ID: strings.Repeat("é", 300), Customer: "cus_long3"}, // 600 bytes, escaped to 1800
	}
	eff := r.effect(attempts(1), 0)
	var keys []string
	for _, in := range ins {
		res, err := r.run(eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
		key := res.Key.String()
		require.Len(t, key, idempotency.MaxKeyLen)
		require.Equal(t, keyOf(in.ID), key)
		require.True(t, strings.HasPrefix(key, "proof.promo:v1:intent="), key)
		require.Equal(t, byte('~'), key[idempotency.MaxKeyLen-33], "shortened keys end in ~ and 32 hex digits: %s", key)
		for i := 0; i < len(key); i++ {
			require.Less(t, key[i], byte(0x80), "the key is ASCII, fit for an HTTP header")
		}
		reqs := r.fake.Requests(key)
		require.Len(t, reqs, 1)
		require.Equal(t, 200, reqs[0].Status, "Stripe accepted the key")
		keys = append(keys, key)
	}
	require.Equal(t, keys[0][:200], keys[1][:200], "same readable prefix")
	require.NotEqual(t, keys[0], keys[1], "the hash tells them apart")
	for _, in := range ins {
		res, err := r.run(eff, in)
		require.NoError(t, err)
		require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	}
	posts := requireOnePerKey(t, r.fake, keys...)
	for _, k := range keys {
		r.requireApplied(k)
	}
	require.Equal(t, len(ins), r.tableRows())
	t.Logf("3 oversized intents (1001, 1001, 600 bytes): keys of %d bytes, %d objects, %d POSTs, reruns already applied",
		idempotency.MaxKeyLen, r.fake.Created(stripefake.KindPromotionCode), posts)
}

// TestBadInputPayloadMismatch: the same key with another payload (another
// customer for the same intent id) is a *MismatchError carrying the stored
// record, whether the record there is applied or still pending, and no
// request for the new payload reaches Stripe.
func TestBadInputPayloadMismatch(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	eff := r.effect(attempts(1), 0)

	applied := intent{ID: "imis1", Customer: "cus_mis1"}
	res, err := r.run(eff, applied)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)

	pending := intent{ID: "imis2", Customer: "cus_mis2"}
	crashAfterStripe(t, r, pending)
	r.clock.Advance(time.Hour) // past the lease: a matching payload would be taken over

	for _, tc := range []struct {
		orig   intent
		status idempotency.State
	}{{applied, idempotency.StateApplied}, {pending, idempotency.StateCalling}} {
		other := intent{ID: tc.orig.ID, Customer: "cus_someone_else"}
		res, err := r.run(eff, other)
		require.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)
		var me *idempotency.MismatchError
		require.ErrorAs(t, err, &me)
		require.Equal(t, tc.status, me.Stored.State)
		require.Equal(t, keyOf(tc.orig.ID), me.Key)
		require.Equal(t, idempotency.OutcomeMismatch, res.Outcome)
		require.Zero(t, res.Calls)
	}
	require.Equal(t, 2, r.fake.RequestCount(), "only the two original requests reached Stripe")
	requireOnePerKey(t, r.fake, keyOf(applied.ID), keyOf(pending.ID))
	r.requireApplied(keyOf(applied.ID))
	lr := r.row(keyOf(pending.ID))
	require.Equal(t, "calling", lr.State)
	require.Equal(t, 1, lr.Claims, "the mismatching run did not take the claim over")
	byState, _ := ledgerCounts(t, r.ctx, r.pool)
	require.Equal(t, map[string]int{"applied": 1, "calling": 1}, byState)
}

// TestBadInputInvalidEffect: a nil effect, a missing Call, Key or Name, a
// negative lease, and a nil store are ErrInvalidEffect (ErrNilStore),
// before the store or Stripe is touched.
func TestBadInputInvalidEffect(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "iinvalid", Customer: "cus_invalid"}
	good := r.effect(attempts(1), 0)
	variants := map[string]*idempotency.Effect[intent, promoResult]{"nil effect": nil}
	for name, change := range map[string]func(e *idempotency.Effect[intent, promoResult]){
		"nil Call":       func(e *idempotency.Effect[intent, promoResult]) { e.Call = nil },
		"nil Key":        func(e *idempotency.Effect[intent, promoResult]) { e.Key = nil },
		"empty Name":     func(e *idempotency.Effect[intent, promoResult]) { e.Name = "" },
		"negative Lease": func(e *idempotency.Effect[intent, promoResult]) { e.Lease = -time.Second },
	} {
		e := *good
		change(&e)
		variants[name] = &e
	}
	for name, e := range variants {
		res, err := r.run(e, in)
		require.ErrorIs(t, err, idempotency.ErrInvalidEffect, name)
		require.Equal(t, idempotency.OutcomeInvalid, res.Outcome, name)
	}
	_, err := idempotency.NewExecutor(nil, nil)
	require.ErrorIs(t, err, idempotency.ErrNilStore)
	_, err = pgguard.New(nil, nil)
	require.ErrorIs(t, err, pgguard.ErrNilDB)
	require.Zero(t, r.tableRows())
	requireNothingSent(t, r.fake)
}

// TestBadInputInvalidTableIdentifier: ledger table and schema names that
// PostgreSQL would truncate or cannot store are *IdentifierError
// (ErrInvalidIdentifier) from New and Migrate, and nothing is created. An
// empty Table is not an error: it means the default, effect_ledger. A
// name that looks like SQL is only a name: it is quoted, never pasted.
func TestBadInputInvalidTableIdentifier(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	tablesNow := func() int {
		var n int
		require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace`).Scan(&n))
		return n
	}
	before := tablesNow()
	for _, cfg := range []pgguard.Config{
		{Table: strings.Repeat("t", 64)},
		{Table: strings.Repeat("t", 51)}, // <table>_status_check would pass 63 bytes
		{Table: "ledger\x00x"},
		{Table: "ledger\xff"},
		{Schema: strings.Repeat("s", 64)},
	} {
		name := cfg.Schema + "." + cfg.Table
		_, err := pgguard.New(r.pool, &cfg)
		require.ErrorIs(t, err, pgguard.ErrInvalidIdentifier, "%q", name)
		var ie *pgguard.IdentifierError
		require.ErrorAs(t, err, &ie)
		require.Equal(t, cfg.Table+cfg.Schema, ie.Name)
		require.ErrorIs(t, pgguard.Migrate(r.ctx, r.pool, &cfg), pgguard.ErrInvalidIdentifier, "%q", name)
	}
	require.Equal(t, before, tablesNow(), "nothing was created")

	// Table "" is the default table; an injection-looking name is a name.
	s, err := pgguard.New(r.pool, &pgguard.Config{Table: ""})
	require.NoError(t, err)
	require.NotNil(t, s)
	odd := pgguard.Config{Table: `Ledger"; DROP TABLE effect_ledger; --`, Now: r.clock.Now}
	require.NoError(t, pgguard.Migrate(r.ctx, r.pool, &odd))
	oddStore, err := pgguard.New(r.pool, &odd)
	require.NoError(t, err)
	x, err := idempotency.NewExecutor(oddStore, nil)
	require.NoError(t, err)
	in := intent{ID: "iodd", Customer: "cus_odd"}
	res, err := idempotency.Run(r.ctx, x, r.effect(attempts(1), 0), in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	var n int
	require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT count(*) FROM "Ledger""; DROP TABLE effect_ledger; --" WHERE state = 'applied'`).Scan(&n))
	require.Equal(t, 1, n)
	require.Zero(t, r.tableRows(), "effect_ledger still exists, and is empty")
	requireOnePerKey(t, r.fake, keyOf(in.ID))
}

// failingCodec cannot encode results, or cannot decode them.
type failingCodec struct{ encode, decode bool }

var errCodec = errors.New("proof: codec refuses")

func (c failingCodec) Encode(v promoResult) ([]byte, error) {
	if c.encode {
		return nil, errCodec
	}
	return json.Marshal(v)
}

func (c failingCodec) Decode(b []byte) (promoResult, error) {
	var v promoResult
	if c.decode {
		return v, errCodec
	}
	err := json.Unmarshal(b, &v)
	return v, err
}

// TestBadInputUnencodableResult: Stripe created the code but the result
// cannot be encoded. The run reports ErrEncodeResult and
// NeedsReconciliation; the row stays in doubt for an operator (listed by
// ListStuck), never applied without a result; later runs, even past the
// lease, call nothing.
func TestBadInputUnencodableResult(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "ienc", Customer: "cus_enc"}
	key := keyOf(in.ID)
	eff := r.effect(attempts(1), 0)
	eff.Codec = failingCodec{encode: true}

	res, err := r.run(eff, in)
	require.ErrorIs(t, err, idempotency.ErrEncodeResult)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)
	lr := r.row(key)
	require.Equal(t, "in_doubt", lr.State)
	require.Nil(t, lr.Result)
	require.Contains(t, lr.Reason, "encode result")
	byState, bad := ledgerCounts(t, r.ctx, r.pool)
	require.Equal(t, map[string]int{"in_doubt": 1}, byState)
	require.Zero(t, bad)
	require.Equal(t, []string{key}, r.stuckKeys())

	r.clock.Advance(time.Hour)
	res, err = r.run(eff, in)
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Zero(t, res.Calls)
	requireOnePerKey(t, r.fake, key)
	require.Len(t, r.fake.Requests(key), 1)
}

// TestBadInputUndecodableStoredResult: a stored result that the effect's
// codec cannot decode is ErrDecodeResult; the applied row is left as it is
// and Stripe is not called.
func TestBadInputUndecodableStoredResult(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	in := intent{ID: "idec", Customer: "cus_dec"}
	key := keyOf(in.ID)
	res, err := r.run(r.effect(attempts(1), 0), in)
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)

	eff := r.effect(attempts(1), 0)
	eff.Codec = failingCodec{decode: true}
	res, err = r.run(eff, in)
	require.ErrorIs(t, err, idempotency.ErrDecodeResult)
	require.Equal(t, idempotency.OutcomeError, res.Outcome)
	require.Zero(t, res.Calls)
	requireOnePerKey(t, r.fake, key)
	require.Len(t, r.fake.Requests(key), 1)
	r.requireApplied(key)
}
