package stripefake

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseForm(t *testing.T) {
	pairs, err := parseForm("b=2&&a=x+y&metadata%5Bk%5D=%C3%A9&flag&=v&a=z")
	require.NoError(t, err)
	require.Equal(t, []formPair{
		{"b", "2"}, {"a", "x y"}, {"metadata[k]", "é"}, {"flag", ""}, {"", "v"}, {"a", "z"},
	}, pairs)

	_, err = parseForm("a=%zz")
	require.Error(t, err)
	_, err = parseForm("%=1")
	require.Error(t, err)

	pairs, err = parseForm("")
	require.NoError(t, err)
	require.Empty(t, pairs)
}

func TestCanonicalForm(t *testing.T) {
	canon := func(s string) string {
		t.Helper()
		pairs, err := parseForm(s)
		require.NoError(t, err)
		return canonicalForm(pairs)
	}
	// Order of distinct keys and escaping do not matter.
	require.Equal(t, canon("coupon=A&metadata[x]=1+2"), canon("metadata%5Bx%5D=1%202&coupon=A"))
	require.Equal(t, "coupon=A&metadata%5Bx%5D=1+2", canon("metadata[x]=1 2&coupon=A"))
	// The order of repeated keys does.
	require.NotEqual(t, canon("a[]=1&a[]=2"), canon("a[]=2&a[]=1"))
	// Values do.
	require.NotEqual(t, canon("amount=100"), canon("amount=101"))
	require.Equal(t, canon("a"), canon("a="))
}

func TestParamsHelpers(t *testing.T) {
	pairs, err := parseForm("metadata[a]=1&metadata[b]=&active=true&n=12&bad=x&e=")
	require.NoError(t, err)
	p := params(pairs)

	meta, clear, bad := p.metadata()
	require.Nil(t, bad)
	require.False(t, clear)
	require.Equal(t, map[string]string{"a": "1", "b": ""}, meta)

	b, set, bad := p.bool("active")
	require.Nil(t, bad)
	require.True(t, set)
	require.True(t, b)

	n, set, bad := p.int64("n")
	require.Nil(t, bad)
	require.True(t, set)
	require.Equal(t, int64(12), n)

	_, _, bad = p.int64("bad")
	require.NotNil(t, bad)
	require.Equal(t, "parameter_invalid_integer", bad.errCode)

	_, _, bad = p.str("e")
	require.NotNil(t, bad)
	require.Equal(t, "parameter_invalid_empty", bad.errCode)

	_, bad = p.required("missing")
	require.Equal(t, "parameter_missing", bad.errCode)

	name, unknown := p.unknown("metadata", "active", "n", "bad")
	require.True(t, unknown)
	require.Equal(t, "e", name)

	pairs, err = parseForm("metadata=")
	require.NoError(t, err)
	_, clear, bad = params(pairs).metadata()
	require.Nil(t, bad)
	require.True(t, clear)

	pairs, err = parseForm("metadata[a][b]=1")
	require.NoError(t, err)
	_, _, bad = params(pairs).metadata()
	require.NotNil(t, bad)
}

// FuzzCanonicalForm checks that parsing never panics and that the canonical
// form is a fixed point that keeps every entry.
func FuzzCanonicalForm(f *testing.F) {
	for _, seed := range []string{
		"", "a=1", "coupon=SPRING&customer=cus_1&metadata[effect]=e-1",
		"metadata%5Bk%5D=%C3%A9&&x", "=", "&&&", "a=%zz", "a=+%2B+", "k=v=w", "\x00=\xff",
		"expand[0]=coupon&expand[1]=customer", "a[]=2&a[]=1&a=0",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		pairs, err := parseForm(body)
		if err != nil {
			return
		}
		c1 := canonicalForm(pairs)
		again, err := parseForm(c1)
		if err != nil {
			t.Fatalf("canonical form %q does not parse: %v", c1, err)
		}
		sorted := slices.Clone(pairs)
		slices.SortStableFunc(sorted, func(a, b formPair) int { return strings.Compare(a.Key, b.Key) })
		if len(sorted) == 0 {
			sorted = nil
		}
		if !slices.Equal(again, sorted) {
			t.Fatalf("canonical form %q parses to %q, want %q", c1, again, sorted)
		}
		if c2 := canonicalForm(again); c2 != c1 {
			t.Fatalf("canonical form not stable: %q then %q", c1, c2)
		}
		p := params(pairs)
		_, _, _ = p.metadata()
		_, _, _ = p.int64("amount")
		_, _, _ = p.bool("active")
		_, _ = p.unknown("a")
	})
}

// FuzzServePost sends arbitrary bodies to every POST endpoint: the server
// must never panic nor answer 5xx without an injected fault.
func FuzzServePost(f *testing.F) {
	f.Add(uint8(0), "coupon=SPRING&customer=cus_1&max_redemptions=1&metadata[a]=b", "k1")
	f.Add(uint8(1), "active=false&metadata=", "")
	f.Add(uint8(2), "payment_intent=pi_1&amount=10", "k2")
	f.Add(uint8(3), "amount=-5&currency=usd&description=x", "k3")
	f.Add(uint8(0), "coupon=SPRING&limit=0&starting_after=x", "k1")
	srv := New()
	defer srv.Close()
	srv.AddCoupon("SPRING", 10)
	srv.AddPaymentIntent("pi_1", 100, "usd")
	paths := []string{"/v1/promotion_codes", "/v1/promotion_codes/promo_000001", "/v1/refunds",
		"/v1/customers/cus_1/balance_transactions"}
	f.Fuzz(func(t *testing.T, which uint8, body, key string) {
		for _, method := range []string{http.MethodPost, http.MethodGet} {
			target := paths[int(which)%len(paths)]
			var req *http.Request
			if method == http.MethodGet {
				req = httptest.NewRequest(method, target, nil)
				req.URL.RawQuery = body
			} else {
				req = httptest.NewRequest(method, target, strings.NewReader(body))
			}
			req.Header.Set("Authorization", "Bearer sk_test_x")
			req.Header.Set("Idempotency-Key", key)
			w := httptest.NewRecorder()
			srv.ServeHTTP(w, req)
			if w.Code >= 500 {
				t.Fatalf("%s %s %q: status %d: %s", method, target, body, w.Code, w.Body)
			}
			if !json.Valid(w.Body.Bytes()) {
				t.Fatalf("%s %s %q: invalid JSON %q", method, target, body, w.Body)
			}
		}
	})
}
