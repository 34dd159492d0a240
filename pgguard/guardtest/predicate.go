package guardtest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// readPredicate reads an index predicate as PostgreSQL renders it
// (pg_get_expr(indpred, indrelid), pretty or not) and returns the column it
// tests and the statuses it covers, in the order they appear. It reads the
// shapes `status IN (...)` and `status = ...` come back as:
//
//	(status = ANY (ARRAY['applied'::text, 'skipped'::text]))
//	(status = 'applied'::text)
//	((status)::text = ANY ((ARRAY['applied'::character varying, ...])::text[]))
//	(status = ANY ('{applied,skipped}'::text[]))
//	((status = 'applied'::text) OR (status = 'skipped'::text))
//
// with any casts (enum, varchar, bpchar, ...) and quoted names. Any other
// shape (AND, <>, NOT IN, IS NULL, a function call, another column in one
// of the disjuncts) is an error: its covered set is not a plain list.
func readPredicate(pred string) (column string, statuses []string, err error) {
	toks, err := tokenize(pred)
	if err != nil {
		return "", nil, err
	}
	p := &parser{toks: toks}
	n, err := p.expr()
	if err != nil {
		return "", nil, err
	}
	if p.pos != len(p.toks) {
		return "", nil, fmt.Errorf("unexpected %q", p.toks[p.pos].text)
	}
	return covered(n)
}

type tokKind int

const (
	tIdent   tokKind = iota // a name, unquoted or quoted (text is the name itself)
	tKeyword                // OR, AND, ANY, ARRAY, ... (text upper-cased)
	tString                 // a string literal (text is its value)
	tNumber
	tPunct // ( ) [ ] , . ::
	tOp    // =, <>, ...
)

type token struct {
	kind tokKind
	text string
}

// keywords are the words the predicate grammar needs to recognise; an
// unquoted word PostgreSQL renders is a keyword or a plain lower-case name
// (quote_identifier quotes everything else).
var keywords = map[string]bool{
	"OR": true, "AND": true, "NOT": true, "ANY": true, "SOME": true, "ALL": true, "ARRAY": true,
	"IS": true, "IN": true, "NULL": true, "TRUE": true, "FALSE": true, "LIKE": true, "BETWEEN": true,
	"CASE": true, "COLLATE": true,
}

func tokenize(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '"':
			v, n, err := quoted(s[i:], '"', false)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{tIdent, v})
			i += n
		case c == '\'':
			v, n, err := quoted(s[i:], '\'', false)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{tString, v})
			i += n
		case (c == 'E' || c == 'e') && i+1 < len(s) && s[i+1] == '\'':
			v, n, err := quoted(s[i+1:], '\'', true)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{tString, v})
			i += 1 + n
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			j := i + 1
			for j < len(s) && (s[j] == '_' || s[j] == '$' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			w := s[i:j]
			if keywords[strings.ToUpper(w)] {
				toks = append(toks, token{tKeyword, strings.ToUpper(w)})
			} else {
				toks = append(toks, token{tIdent, w})
			}
			i = j
		case c >= '0' && c <= '9':
			j := i + 1
			for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
				j++
			}
			toks = append(toks, token{tNumber, s[i:j]})
			i = j
		case c == ':' && i+1 < len(s) && s[i+1] == ':':
			toks = append(toks, token{tPunct, "::"})
			i += 2
		case strings.IndexByte("()[],.", c) >= 0:
			toks = append(toks, token{tPunct, string(c)})
			i++
		case strings.IndexByte("+-*/<>=~!@#%^&|`?", c) >= 0:
			j := i + 1
			for j < len(s) && strings.IndexByte("+-*/<>=~!@#%^&|`?", s[j]) >= 0 {
				j++
			}
			toks = append(toks, token{tOp, s[i:j]})
			i = j
		default:
			return nil, fmt.Errorf("unexpected character %q", s[i:i+1])
		}
	}
	return toks, nil
}

// quoted reads a quoted identifier or string starting at s[0] (the quote)
// and returns its value and length. A doubled quote stands for one; in an
// E-prefixed string (escapes), a backslash escapes the next character.
func quoted(s string, q byte, escapes bool) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch {
		case escapes && s[i] == '\\':
			if i+1 >= len(s) || s[i+1] != '\\' && s[i+1] != q {
				return "", 0, errors.New("unsupported escape in an E'' string")
			}
			i++
			b.WriteByte(s[i])
		case s[i] == q && i+1 < len(s) && s[i+1] == q:
			b.WriteByte(q)
			i++
		case s[i] == q:
			return b.String(), i + 1, nil
		default:
			b.WriteByte(s[i])
		}
	}
	return "", 0, errors.New("unterminated quote")
}

// The syntax tree. Parentheses and casts are dropped: they change neither
// which column is tested nor which values it is compared with.
type (
	colNode   struct{ name string }
	litNode   struct{ value string }
	arrayNode struct{ elems []node }
	cmpNode   struct {
		left, right node
		op          string // "=", "<>", ...
		quant       string // "" or ANY, SOME, ALL
	}
	orNode struct{ args []node }
	node   any
)

type parser struct {
	toks []token
	pos  int
}

func (p *parser) peek() (token, bool) {
	if p.pos < len(p.toks) {
		return p.toks[p.pos], true
	}
	return token{}, false
}

func (p *parser) is(kind tokKind, text string) bool {
	t, ok := p.peek()
	return ok && t.kind == kind && t.text == text
}

func (p *parser) expect(kind tokKind, text string) error {
	if !p.is(kind, text) {
		return p.unexpected("want " + text)
	}
	p.pos++
	return nil
}

func (p *parser) unexpected(what string) error {
	if t, ok := p.peek(); ok {
		return fmt.Errorf("%s, got %q", what, t.text)
	}
	return fmt.Errorf("%s at the end", what)
}

// expr := cmp (OR cmp)*. AND is refused: a conjunction is not a list of
// statuses.
func (p *parser) expr() (node, error) {
	first, err := p.cmp()
	if err != nil {
		return nil, err
	}
	args := []node{first}
	for p.is(tKeyword, "OR") {
		p.pos++
		n, err := p.cmp()
		if err != nil {
			return nil, err
		}
		args = append(args, n)
	}
	if t, ok := p.peek(); ok && t.kind == tKeyword && t.text != "OR" {
		return nil, fmt.Errorf("unsupported %s", t.text)
	}
	if len(args) == 1 {
		return first, nil
	}
	return orNode{args}, nil
}

// cmp := operand [op (ANY|SOME|ALL '(' expr ')' | operand)]
func (p *parser) cmp() (node, error) {
	left, err := p.operand()
	if err != nil {
		return nil, err
	}
	t, ok := p.peek()
	if !ok || t.kind != tOp {
		return left, nil
	}
	p.pos++
	c := cmpNode{left: left, op: t.text}
	if q, ok := p.peek(); ok && q.kind == tKeyword && (q.text == "ANY" || q.text == "SOME" || q.text == "ALL") {
		p.pos++
		c.quant = q.text
		if err := p.expect(tPunct, "("); err != nil {
			return nil, err
		}
		if c.right, err = p.expr(); err != nil {
			return nil, err
		}
		return c, p.expect(tPunct, ")")
	}
	if c.right, err = p.operand(); err != nil {
		return nil, err
	}
	return c, nil
}

// operand := primary ('::' type)*
func (p *parser) operand() (node, error) {
	n, err := p.primary()
	if err != nil {
		return nil, err
	}
	for p.is(tPunct, "::") {
		p.pos++
		if err := p.typeName(); err != nil {
			return nil, err
		}
	}
	return n, nil
}

func (p *parser) primary() (node, error) {
	t, ok := p.peek()
	if !ok {
		return nil, p.unexpected("want an operand")
	}
	switch {
	case t.kind == tPunct && t.text == "(":
		p.pos++
		n, err := p.expr()
		if err != nil {
			return nil, err
		}
		return n, p.expect(tPunct, ")")
	case t.kind == tIdent:
		p.pos++
		if p.is(tPunct, "(") || p.is(tPunct, ".") {
			return nil, fmt.Errorf("unsupported function call or qualified name %s", t.text)
		}
		return colNode{t.text}, nil
	case t.kind == tString:
		p.pos++
		return litNode{t.text}, nil
	case t.kind == tKeyword && t.text == "ARRAY":
		p.pos++
		if err := p.expect(tPunct, "["); err != nil {
			return nil, err
		}
		var a arrayNode
		for !p.is(tPunct, "]") {
			if len(a.elems) > 0 {
				if err := p.expect(tPunct, ","); err != nil {
					return nil, err
				}
			}
			e, err := p.operand()
			if err != nil {
				return nil, err
			}
			a.elems = append(a.elems, e)
		}
		p.pos++
		return a, nil
	}
	return nil, p.unexpected("want a column, a string or an array")
}

// typeName skips a type after '::': words and quoted names, dotted
// (character varying, public."Status"), an optional modifier ((20)) and
// array brackets.
func (p *parser) typeName() error {
	n := 0
	for {
		t, ok := p.peek()
		if !ok || t.kind != tIdent {
			break
		}
		p.pos++
		n++
		if p.is(tPunct, ".") {
			p.pos++
		}
	}
	if n == 0 {
		return p.unexpected("want a type name")
	}
	if p.is(tPunct, "(") {
		p.pos++
		for !p.is(tPunct, ")") {
			t, ok := p.peek()
			if !ok || t.kind != tNumber && !(t.kind == tPunct && t.text == ",") {
				return p.unexpected("want a type modifier")
			}
			p.pos++
		}
		p.pos++
	}
	for p.is(tPunct, "[") {
		p.pos++
		if t, ok := p.peek(); ok && t.kind == tNumber {
			p.pos++
		}
		if err := p.expect(tPunct, "]"); err != nil {
			return err
		}
	}
	return nil
}

// covered turns the tree into (column, statuses).
func covered(n node) (string, []string, error) {
	switch n := n.(type) {
	case orNode:
		var column string
		var out []string
		for i, a := range n.args {
			c, s, err := covered(a)
			if err != nil {
				return "", nil, err
			}
			if i > 0 && c != column {
				return "", nil, fmt.Errorf("the disjuncts test different columns (%s, %s)", column, c)
			}
			column = c
			for _, v := range s {
				if !slices.Contains(out, v) {
					out = append(out, v)
				}
			}
		}
		return column, out, nil
	case cmpNode:
		if n.op != "=" || n.quant == "ALL" {
			return "", nil, fmt.Errorf("unsupported comparison %s %s", n.op, n.quant)
		}
		col, ok := n.left.(colNode)
		other := n.right
		if !ok && n.quant == "" { // 'applied' = status
			col, ok = n.right.(colNode)
			other = n.left
		}
		if !ok {
			return "", nil, errors.New("the comparison does not test a column against constants")
		}
		if n.quant == "" {
			lit, ok := other.(litNode)
			if !ok {
				return "", nil, errors.New("the comparison does not test a column against a constant")
			}
			return col.name, []string{lit.value}, nil
		}
		var out []string
		switch a := other.(type) {
		case arrayNode:
			for _, e := range a.elems {
				lit, ok := e.(litNode)
				if !ok {
					return "", nil, errors.New("an array element is not a constant")
				}
				if !slices.Contains(out, lit.value) {
					out = append(out, lit.value)
				}
			}
		case litNode: // '{applied,skipped}'::text[]
			elems, err := arrayLiteral(a.value)
			if err != nil {
				return "", nil, err
			}
			for _, v := range elems {
				if !slices.Contains(out, v) {
					out = append(out, v)
				}
			}
		default:
			return "", nil, errors.New("ANY is not over a constant array")
		}
		return col.name, out, nil
	}
	return "", nil, errors.New("not a comparison of a column with constants")
}

// arrayLiteral reads a one-dimensional array constant, {a,"b c"}.
func arrayLiteral(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return nil, fmt.Errorf("unsupported array constant %q", s)
	}
	body := s[1 : len(s)-1]
	var out []string
	for i := 0; i < len(body); {
		var b strings.Builder
		if body[i] == '"' {
			i++
			for ; i < len(body) && body[i] != '"'; i++ {
				if body[i] == '\\' && i+1 < len(body) {
					i++
				}
				b.WriteByte(body[i])
			}
			if i >= len(body) {
				return nil, fmt.Errorf("unterminated element in array constant %q", s)
			}
			i++
			out = append(out, b.String())
		} else {
			for ; i < len(body) && body[i] != ','; i++ {
				if body[i] == '{' || body[i] == '"' || body[i] == '\\' {
					return nil, fmt.Errorf("unsupported array constant %q", s)
				}
				b.WriteByte(body[i])
			}
			v := strings.TrimSpace(b.String())
			if strings.EqualFold(v, "NULL") {
				return nil, fmt.Errorf("NULL in array constant %q", s)
			}
			out = append(out, v)
		}
		if i < len(body) {
			if body[i] != ',' {
				return nil, fmt.Errorf("unsupported array constant %q", s)
			}
			i++
		}
	}
	return out, nil
}
