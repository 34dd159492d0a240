package idempotency_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
)

var loyalty = idempotency.KeySpace{Namespace: "loyalty.promo", Version: 1}

func TestKeyIsStableAndReadable(t *testing.T) {
	t.Parallel()
	a := loyalty.MustKey(idempotency.Str("user", "u_42"), idempotency.Str("sub", "sub_9"), idempotency.Int("milestone", 12))
	b := loyalty.MustKey(idempotency.Str("user", "u_42"), idempotency.Str("sub", "sub_9"), idempotency.Int("milestone", 12))
	require.Equal(t, a, b)
	require.Equal(t, "loyalty.promo:v1:user=u_42/sub=sub_9/milestone#12", a.String())
	require.Equal(t, "loyalty.promo", a.Namespace())
	require.False(t, a.HMAC())
}

func TestKeyEncodingIsInjective(t *testing.T) {
	t.Parallel()
	S, I := idempotency.Str, idempotency.Int
	lists := [][]idempotency.Part{
		{S("a", "b/c")},
		{S("a", "b"), S("c", "x")},
		{S("a", "b=c")},
		{S("a", "1")},
		{I("a", 1)},
		{S("a", "%2F")},
		{S("a", "/")},
		{S("a", "x~y")},
		{S("a", "x"), I("b", -1)},
		{S("a", "x/b#-1")},
		{S("b", "x"), S("a", "x")},
		{S("a", "x"), S("b", "x")},
		{S("a", "é")},
		{S("a", "%C3%A9")},
	}
	seen := map[string]int{}
	for i, parts := range lists {
		k, err := loyalty.Key(parts...)
		require.NoError(t, err)
		if j, dup := seen[k.String()]; dup {
			t.Fatalf("part lists %d and %d encode to the same key %q", j, i, k)
		}
		seen[k.String()] = i
	}
	v2 := idempotency.KeySpace{Namespace: "loyalty.promo", Version: 2}
	require.NotEqual(t, loyalty.MustKey(S("a", "b")), v2.MustKey(S("a", "b")), "versions must not collide")
	other := idempotency.KeySpace{Namespace: "loyalty.promo2"}
	require.NotEqual(t, loyalty.MustKey(S("a", "b")), other.MustKey(S("a", "b")), "namespaces must not collide")
}

func TestKeyRejectsBadInput(t *testing.T) {
	t.Parallel()
	S := idempotency.Str
	tests := []struct {
		name  string
		space idempotency.KeySpace
		parts []idempotency.Part
		want  error
	}{
		{"EmptyNamespace", idempotency.KeySpace{}, []idempotency.Part{S("a", "b")}, idempotency.ErrEmptyNamespace},
		{"NamespaceWithColon", idempotency.KeySpace{Namespace: "a:b"}, []idempotency.Part{S("a", "b")}, idempotency.ErrInvalidName},
		{"NoParts", loyalty, nil, idempotency.ErrNoParts},
		{"EmptyPartValue", loyalty, []idempotency.Part{S("user", "")}, idempotency.ErrEmptyPart},
		{"EmptyPartName", loyalty, []idempotency.Part{S("", "x")}, idempotency.ErrInvalidName},
		{"PartNameWithSeparator", loyalty, []idempotency.Part{S("a=b", "x")}, idempotency.ErrInvalidName},
		{"InvalidUTF8", loyalty, []idempotency.Part{S("user", "\xff\xfe")}, idempotency.ErrInvalidUTF8},
		{"NegativeVersion", idempotency.KeySpace{Namespace: "x", Version: -1}, []idempotency.Part{S("a", "b")}, idempotency.ErrInvalidName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := tc.space.Key(tc.parts...)
			require.ErrorIs(t, err, tc.want)
			require.ErrorIs(t, err, idempotency.ErrInvalidKey)
			var ke *idempotency.KeyError
			require.True(t, errors.As(err, &ke))
		})
	}
}

func TestLongKeysKeepPrefixAndHash(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 400)
	a := loyalty.MustKey(idempotency.Str("user", long), idempotency.Int("m", 1))
	b := loyalty.MustKey(idempotency.Str("user", long), idempotency.Int("m", 2))
	require.Len(t, a.String(), idempotency.MaxKeyLen)
	require.True(t, strings.HasPrefix(a.String(), "loyalty.promo:v1:user=xxxx"))
	require.Contains(t, a.String(), "~")
	require.NotEqual(t, a, b, "parts past the cut must still change the key")

	exact := loyalty.MustKey(idempotency.Str("u", strings.Repeat("y", idempotency.MaxKeyLen-len("loyalty.promo:v1:u="))))
	require.Len(t, exact.String(), idempotency.MaxKeyLen)
	require.NotContains(t, exact.String(), "~", "a key of exactly 255 bytes is not shortened")
}

func TestHMACKeysHideIdentity(t *testing.T) {
	t.Parallel()
	secret := idempotency.KeySpace{Namespace: "loyalty.promo", Secret: []byte("s3cret")}
	k := secret.MustKey(idempotency.Str("user", "alice@example.com"))
	require.True(t, k.HMAC())
	require.NotContains(t, k.String(), "alice")
	require.True(t, strings.HasPrefix(k.String(), "loyalty.promo:v1:h:"))
	require.Equal(t, k, secret.MustKey(idempotency.Str("user", "alice@example.com")))
	require.NotEqual(t, k, idempotency.KeySpace{Namespace: "loyalty.promo", Secret: []byte("other")}.MustKey(idempotency.Str("user", "alice@example.com")))
	require.Equal(t, "loyalty.promo:<hmac>", k.LogValue().String())
	require.LessOrEqual(t, len(k.String()), idempotency.MaxKeyLen)
}

// decode reverses the canonical encoding of an unshortened, non-HMAC key, to
// prove injectivity in the fuzz target: if decoding gives back the parts,
// no two part lists can share a key.
func decode(t *testing.T, key string) []string {
	rest := strings.TrimPrefix(key, "fuzz:v1:")
	var out []string
	for _, seg := range strings.Split(rest, "/") {
		out = append(out, seg)
	}
	return out
}

func FuzzKey(f *testing.F) {
	f.Add("u_1", "sub_1", int64(12), "u_1/sub", "1", int64(0))
	f.Add("a=b", "#", int64(-5), "a", "b=#", int64(-5))
	f.Add(strings.Repeat("z", 300), "x", int64(1), strings.Repeat("z", 300), "y", int64(1))
	f.Add("é/~%", "\x00", int64(7), "%C3%A9", "%00", int64(7))
	space := idempotency.KeySpace{Namespace: "fuzz"}
	f.Fuzz(func(t *testing.T, a1, a2 string, a3 int64, b1, b2 string, b3 int64) {
		ka, errA := space.Key(idempotency.Str("p1", a1), idempotency.Str("p2", a2), idempotency.Int("p3", a3))
		kb, errB := space.Key(idempotency.Str("p1", b1), idempotency.Str("p2", b2), idempotency.Int("p3", b3))
		for _, c := range []struct {
			k      idempotency.Key
			err    error
			s1, s2 string
		}{{ka, errA, a1, a2}, {kb, errB, b1, b2}} {
			if c.err != nil {
				if c.s1 != "" && c.s2 != "" && utf8.ValidString(c.s1) && utf8.ValidString(c.s2) {
					t.Fatalf("valid parts rejected: %v", c.err)
				}
				continue
			}
			if len(c.k.String()) > idempotency.MaxKeyLen {
				t.Fatalf("key of %d bytes exceeds %d", len(c.k.String()), idempotency.MaxKeyLen)
			}
			if !utf8.ValidString(c.k.String()) {
				t.Fatalf("key is not valid UTF-8: %q", c.k)
			}
			for i := 0; i < len(c.k.String()); i++ {
				if ch := c.k.String()[i]; ch < 0x21 || ch > 0x7e {
					t.Fatalf("key holds a byte unsafe in an HTTP header: %q", c.k)
				}
			}
			if len(decode(t, c.k.String())) != 3 && !strings.Contains(c.k.String(), "~") {
				t.Fatalf("separator leaked from a value: %q", c.k)
			}
		}
		if errA != nil || errB != nil {
			return
		}
		same := a1 == b1 && a2 == b2 && a3 == b3
		if same != (ka == kb) {
			t.Fatalf("injectivity broken: (%q,%q,%d) -> %q and (%q,%q,%d) -> %q", a1, a2, a3, ka, b1, b2, b3, kb)
		}
		// The UUID form and the provider-key generations keep injectivity.
		if same != (ka.UUID() == kb.UUID()) {
			t.Fatalf("UUID collision: %q and %q both give %s", ka, kb, ka.UUID())
		}
		gens := map[string]string{}
		for _, k := range []idempotency.Key{ka, kb} {
			for g := 1; g <= 3; g++ {
				v := k.WithGeneration(g)
				if len(v.String()) > idempotency.MaxKeyLen || v.Base() != k || v.Generation() != g {
					t.Fatalf("generation %d of %q: %q (base %q, generation %d)", g, k, v, v.Base(), v.Generation())
				}
				id := fmt.Sprintf("%s|%d", k, g)
				if prev, dup := gens[v.String()]; dup && prev != id {
					t.Fatalf("provider keys collide: %s and %s give %q", prev, id, v)
				}
				gens[v.String()] = id
			}
		}
	})
}

// TestKeyUUIDIsStable pins UUIDs computed independently (Python's
// uuid.uuid5 with this library's namespace): a change here would give every
// existing intent a new provider key.
func TestKeyUUIDIsStable(t *testing.T) {
	for value, want := range map[string]string{
		"payouts.transfer:v1:payout=po_123":         "1051d040-d493-5107-a258-4cc9bdf5ff16",
		"orders.refund:v1:order=ord_1/request=rr_1": "7e23db41-1985-5662-966b-d79440a6ad61",
	} {
		ns, rest, _ := strings.Cut(value, ":v1:")
		name, v, _ := strings.Cut(rest, "=")
		parts := []idempotency.Part{}
		if name == "order" {
			order, req, _ := strings.Cut(v, "/request=")
			parts = append(parts, idempotency.Str("order", order), idempotency.Str("request", req))
		} else {
			parts = append(parts, idempotency.Str(name, v))
		}
		k := idempotency.KeySpace{Namespace: ns}.MustKey(parts...)
		if k.String() != value {
			t.Fatalf("key %q, want %q", k, value)
		}
		if got := k.UUID(); got != want {
			t.Fatalf("UUID of %q: %s, want %s", value, got, want)
		}
		u := k.UUID()
		if u[14] != '5' || !strings.ContainsRune("89ab", rune(u[19])) {
			t.Fatalf("%s is not an RFC 9562 version 5 UUID", u)
		}
	}
}

func TestKeyGenerations(t *testing.T) {
	ks := idempotency.KeySpace{Namespace: "orders.refund"}
	k := ks.MustKey(idempotency.Str("request", "rr_1"))
	if k.WithGeneration(1) != k || k.Generation() != 1 {
		t.Fatal("generation 1 is the key itself")
	}
	g2 := k.WithGeneration(2)
	if g2.String() != k.String()+"~g2" || g2.Base() != k || g2.Namespace() != "orders.refund" {
		t.Fatalf("generation 2: %q", g2)
	}
	if g2.WithGeneration(3).String() != k.String()+"~g3" {
		t.Fatal("a generation is derived from the base key")
	}
	long := ks.MustKey(idempotency.Str("request", strings.Repeat("x", 400)))
	g12 := long.WithGeneration(12)
	if len(g12.String()) != idempotency.MaxKeyLen || !strings.HasSuffix(g12.String(), "~g12") {
		t.Fatalf("a long key keeps its generation within %d bytes: %q", idempotency.MaxKeyLen, g12)
	}
	hk := idempotency.KeySpace{Namespace: "orders.refund", Secret: []byte("s")}.MustKey(idempotency.Str("request", "rr_1"))
	if g := hk.WithGeneration(2); !g.HMAC() || g.LogValue().String() != "orders.refund:<hmac>" {
		t.Fatalf("an HMAC key's generation stays an HMAC key: %v", g.LogValue())
	}
}
