package guardtest

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReadPredicate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pred, col string
		want      []string
	}{
		// As pg_get_expr(indpred, indrelid) renders them (PostgreSQL 15).
		{`(status = ANY (ARRAY['applied'::text, 'skipped'::text]))`, "status", []string{"applied", "skipped"}},
		{`(status = 'applied'::text)`, "status", []string{"applied"}},
		{`((status)::text = ANY ((ARRAY['applied'::character varying, 'skipped'::character varying])::text[]))`, "status", []string{"applied", "skipped"}},
		{`((status)::text = 'applied'::text)`, "status", []string{"applied"}},
		{`(e = ANY (ARRAY['applied'::st, 'skipped'::st]))`, "e", []string{"applied", "skipped"}},
		{`(e = ANY (ARRAY['applied'::public."Status", 'skipped'::public."Status"]))`, "e", []string{"applied", "skipped"}},
		{`(c = ANY (ARRAY['applied'::bpchar, 'skipped'::bpchar]))`, "c", []string{"applied", "skipped"}},
		{`((s = 'a'::text) OR (s = 'b'::text) OR (s = 'a'::text))`, "s", []string{"a", "b"}},
		{`(s = ANY ('{applied,"sk ipped","q\"uote"}'::text[]))`, "s", []string{"applied", "sk ipped", `q"uote`}},
		{`("Weird Col" = ANY (ARRAY['it''s'::text, 'back\slash'::text]))`, "Weird Col", []string{"it's", `back\slash`}},
		{`("St" = E'back\\slash'::character varying(20))`, "St", []string{`back\slash`}},
		{`('applied'::text = status)`, "status", []string{"applied"}},
		// Pretty-printed.
		{`status = ANY (ARRAY['applied'::text, 'skipped'::text])`, "status", []string{"applied", "skipped"}},
		{`v::text = ANY (ARRAY['applied'::character varying, 'skipped'::character varying]::text[])`, "v", []string{"applied", "skipped"}},
		{`s = 'a'::text OR s = 'b'::text`, "s", []string{"a", "b"}},
	} {
		col, got, err := readPredicate(tc.pred)
		require.NoError(t, err, tc.pred)
		require.Equal(t, tc.col, col, tc.pred)
		require.Equal(t, tc.want, got, tc.pred)
	}
}

func TestReadPredicateRefusesOtherShapes(t *testing.T) {
	t.Parallel()
	for _, pred := range []string{
		`((status = 'applied'::text) AND (promo_code <> ''::text))`,
		`(status <> 'revoked'::text)`,
		`(status <> ALL (ARRAY['revoked'::text, 'failed'::text]))`,
		`(status IS NOT NULL)`,
		`(lower(status) = 'applied'::text)`,
		`((s = 'a'::text) OR (t = 'b'::text))`,
		`(s = t)`,
		`(s = ANY (ARRAY[t, 'a'::text]))`,
		`(s = ANY ('{a,NULL}'::text[]))`,
		`NOT (s = 'a'::text)`,
		`true`,
		`(s = 'a'::text`,
		`(s = 'unterminated)`,
		`s = 1`,
	} {
		_, _, err := readPredicate(pred)
		require.Error(t, err, pred)
	}
}
