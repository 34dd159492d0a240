package stripefake

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// formPair is one key=value entry of a form-encoded body, already unescaped.
type formPair struct {
	Key, Value string
}

// parseForm decodes an application/x-www-form-urlencoded string the way
// stripe-go produces it: entries separated by '&', key and value separated by
// the first '=', '+' meaning a space and %XX escapes. Empty entries are
// skipped and an entry without '=' has an empty value. The order of entries is
// kept. It returns an error for a malformed escape and never panics.
func parseForm(s string) ([]formPair, error) {
	var pairs []formPair
	for s != "" {
		var seg string
		seg, s, _ = strings.Cut(s, "&")
		if seg == "" {
			continue
		}
		rawKey, rawValue, _ := strings.Cut(seg, "=")
		key, err := url.QueryUnescape(rawKey)
		if err != nil {
			return nil, fmt.Errorf("malformed form key %q: %w", rawKey, err)
		}
		value, err := url.QueryUnescape(rawValue)
		if err != nil {
			return nil, fmt.Errorf("malformed form value for %q: %w", key, err)
		}
		pairs = append(pairs, formPair{Key: key, Value: value})
	}
	return pairs, nil
}

// canonicalForm encodes pairs in a canonical form used to compare the
// parameters of two requests: entries are sorted by key (a stable sort, so
// repeated keys such as "arr[]" keep their relative order, which is
// significant) and every key and value is escaped the same way. Two bodies
// that differ only in the order of distinct keys or in how characters were
// escaped have the same canonical form. parseForm(canonicalForm(p)) returns p
// sorted, so the canonical form is a fixed point.
func canonicalForm(pairs []formPair) string {
	sorted := slices.Clone(pairs)
	slices.SortStableFunc(sorted, func(a, b formPair) int { return strings.Compare(a.Key, b.Key) })
	var b strings.Builder
	for i, p := range sorted {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(p.Key))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(p.Value))
	}
	return b.String()
}

// params gives the handlers typed access to a parsed form.
type params []formPair

// topName is the parameter name before any bracket: "metadata[k]" → "metadata".
func topName(key string) string {
	if i := strings.IndexByte(key, '['); i >= 0 {
		return key[:i]
	}
	return key
}

// unknown returns the first parameter whose top-level name is not allowed.
func (p params) unknown(allowed ...string) (string, bool) {
	for _, kv := range p {
		if !slices.Contains(allowed, topName(kv.Key)) {
			return kv.Key, true
		}
	}
	return "", false
}

// get returns the last value sent for exactly this key.
func (p params) get(key string) (string, bool) {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i].Key == key {
			return p[i].Value, true
		}
	}
	return "", false
}

// has reports whether any parameter with this top-level name was sent.
func (p params) has(name string) bool {
	for _, kv := range p {
		if topName(kv.Key) == name {
			return true
		}
	}
	return false
}

// metadata returns the metadata[...] entries. clear is true when the request
// sent "metadata=" (empty), which unsets all keys on update.
func (p params) metadata() (set map[string]string, clear bool, err *reply) {
	for _, kv := range p {
		if kv.Key == "metadata" {
			if kv.Value != "" {
				r := invalidRequest(400, "", "Invalid object", "metadata")
				return nil, false, &r
			}
			clear = true
			continue
		}
		if !strings.HasPrefix(kv.Key, "metadata[") {
			continue
		}
		inner, ok := strings.CutSuffix(strings.TrimPrefix(kv.Key, "metadata["), "]")
		if !ok || inner == "" || strings.ContainsAny(inner, "[]") {
			r := invalidRequest(400, "", fmt.Sprintf("Invalid metadata key: %q", kv.Key), "metadata")
			return nil, false, &r
		}
		if set == nil {
			set = map[string]string{}
		}
		set[inner] = kv.Value
	}
	return set, clear, nil
}

// str returns a string parameter. An explicitly empty value is an error, as
// in Stripe, unless allowEmpty.
func (p params) str(key string) (string, bool, *reply) {
	v, ok := p.get(key)
	if !ok {
		return "", false, nil
	}
	if v == "" {
		r := invalidRequest(400, "parameter_invalid_empty", fmt.Sprintf(
			"You passed an empty string for '%s'. We assume empty values are an attempt to unset a parameter; "+
				"however '%s' cannot be unset. You should remove '%s' from your request or supply a non-empty value.",
			key, key, key), key)
		return "", false, &r
	}
	return v, true, nil
}

// required returns a string parameter that must be present and non-empty.
func (p params) required(key string) (string, *reply) {
	v, ok, bad := p.str(key)
	if bad != nil {
		return "", bad
	}
	if !ok {
		r := invalidRequest(400, "parameter_missing", fmt.Sprintf("Missing required param: %s.", key), key)
		return "", &r
	}
	return v, nil
}

// int64 parses an integer parameter.
func (p params) int64(key string) (int64, bool, *reply) {
	v, ok, bad := p.str(key)
	if bad != nil || !ok {
		return 0, false, bad
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		r := invalidRequest(400, "parameter_invalid_integer", fmt.Sprintf("Invalid integer: %s", v), key)
		return 0, false, &r
	}
	return n, true, nil
}

// bool parses a boolean parameter ("true" or "false").
func (p params) bool(key string) (bool, bool, *reply) {
	v, ok, bad := p.str(key)
	if bad != nil || !ok {
		return false, false, bad
	}
	switch v {
	case "true":
		return true, true, nil
	case "false":
		return false, true, nil
	}
	r := invalidRequest(400, "", fmt.Sprintf("Invalid boolean: %s", v), key)
	return false, false, &r
}
