package idempotency

import (
	"crypto/hmac"
	"crypto/sha1" // #nosec G505 -- RFC 9562 name-based UUIDs are defined on SHA-1
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxKeyLen is the longest key the builder produces, in bytes. It is
// Stripe's limit for an Idempotency-Key; most other providers accept at
// least as much.
const MaxKeyLen = 255

// hashSuffixLen is the number of hex characters of SHA-256 kept at the end of
// a key that had to be shortened (128 bits).
const hashSuffixLen = 32

// maxNamespaceLen bounds the namespace so that a shortened key always keeps a
// readable prefix after it.
const maxNamespaceLen = 64

// KeySpace builds the keys of one kind of effect. Keys are made only from a
// namespace, a version and ordered, named business parts: there is no way to
// pass a time.Time, and the builder never reads the clock. A business period
// (a tax year, a milestone number) is an Int part taken from business data.
//
// The zero KeySpace is not usable: Namespace is required.
type KeySpace struct {
	// Namespace names the effect, for example "loyalty.promo". It must be
	// 1-64 characters of ASCII letters, digits, '.', '_' or '-', starting
	// with a letter or digit. It stays readable in every key, hashed or not.
	Namespace string

	// Version is the encoding version of this effect's keys. Zero means 1.
	// Bump it only when the same business intent must deliberately get a
	// new key.
	Version int

	// Secret, when set, turns on HMAC mode: the key sent to the provider is
	// "<namespace>:v<version>:h:" followed by the hex HMAC-SHA256 of the
	// canonical key, so raw ids never leave the service. Keep the secret
	// stable: changing it changes every key.
	Secret []byte
}

// Part is one named component of a key. Build parts with Str and Int.
type Part struct {
	name  string
	str   string
	num   int64
	isInt bool
}

// Str returns a string part. An empty value is rejected by the builder.
func Str(name, value string) Part { return Part{name: name, str: value} }

// Int returns an integer part, for business numbers such as a tax year or a
// milestone.
func Int(name string, value int64) Part { return Part{name: name, num: value, isInt: true} }

// Key is an idempotency key: the same business intent always yields the same
// Key. String returns the value to send as the provider's Idempotency-Key and
// to store in the ledger. When logged through log/slog, a key built in HMAC
// mode shows only its namespace.
type Key struct {
	value     string
	namespace string
	hashed    bool
	// base is the generation-1 key when gen > 1.
	base string
	gen  int
}

// String returns the key as sent to providers. For generation 1 (every key
// the builder makes) it is also the key stored in the ledger.
func (k Key) String() string { return k.value }

// Base returns the key's first generation: the business key, under which
// the ledger stores the record and which the adapters put in the metadata
// of what they create, so that a lookup at the provider (Effect.Find)
// matches every generation.
func (k Key) Base() Key {
	if k.gen <= 1 {
		return k
	}
	b := k
	b.value, b.base, b.gen = k.base, "", 0
	return b
}

// Generation returns the key's provider-key generation, 1 for the keys the
// builder makes.
func (k Key) Generation() int { return max(k.gen, 1) }

// WithGeneration returns the provider key of generation g of k's business
// key: k.Base() itself for g <= 1, else the base followed by "~g" and g.
// The executor sends a new generation only after the provider was asked
// (Effect.Find) and had nothing under the earlier ones, because a provider
// may replay a saved failure under an old key for ever. Generations of one
// key never collide with each other or with another key: '~' followed by
// 'g' appears in no key the builder makes (values escape '~', and a
// shortened key ends in '~' and hex digits). A result longer than MaxKeyLen
// keeps the suffix and cuts the base.
func (k Key) WithGeneration(g int) Key {
	b := k.Base()
	if g <= 1 || b.IsZero() {
		return b
	}
	suffix := "~g" + strconv.Itoa(g)
	v := b.value
	if len(v)+len(suffix) > MaxKeyLen {
		v = v[:MaxKeyLen-len(suffix)]
	}
	out := b
	out.value, out.base, out.gen = v+suffix, b.value, g
	return out
}

// uuidNamespace is this library's fixed UUID namespace for Key.UUID (a
// version 4 UUID drawn once; it never changes, or every derived UUID would).
var uuidNamespace = [16]byte{0x6b, 0x1e, 0x3c, 0x52, 0x9d, 0x0f, 0x4a, 0x8e, 0xb5, 0x27, 0x61, 0xd4, 0x0c, 0x93, 0xfa, 0x18}

// UUID returns the key as a deterministic, name-based UUID (RFC 9562
// version 5: SHA-1 of this library's fixed namespace and String()), for
// providers that take the idempotency key only as a UUID (a payouts
// provider's transaction id, say). The same key always gives the same
// UUID, in every version of this library; two different keys give two
// different UUIDs short of a SHA-1 collision on 122 bits. Like String, it
// depends on the generation. Never use a random UUID as a key: it changes
// on every delivery.
func (k Key) UUID() string {
	h := sha1.New()
	h.Write(uuidNamespace[:])
	h.Write([]byte(k.value))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	var buf [36]byte
	hex.Encode(buf[0:8], u[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], u[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], u[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], u[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:], u[10:])
	return string(buf[:])
}

// Namespace returns the namespace the key was built in.
func (k Key) Namespace() string { return k.namespace }

// HMAC reports whether the key was derived with a secret.
func (k Key) HMAC() bool { return k.hashed }

// IsZero reports whether k is the zero Key.
func (k Key) IsZero() bool { return k.value == "" }

// LogValue implements slog.LogValuer. In HMAC mode only the namespace is
// logged, never the key.
func (k Key) LogValue() slog.Value {
	if k.hashed {
		return slog.StringValue(k.namespace + ":<hmac>")
	}
	return slog.StringValue(k.value)
}

// Key builds the key for the given parts. The encoding is injective: two
// different part lists (names, kinds, values or order) never give the same
// key, short of a SHA-256 collision. Keys longer than MaxKeyLen keep a
// readable prefix and end in "~" and a hash of the whole canonical key.
//
// Errors wrap ErrInvalidKey and one of ErrEmptyNamespace, ErrNoParts,
// ErrEmptyPart, ErrInvalidUTF8 or ErrInvalidName, as a *KeyError.
func (s KeySpace) Key(parts ...Part) (Key, error) {
	canonical, err := s.canonical(parts)
	if err != nil {
		return Key{}, err
	}
	if len(s.Secret) > 0 {
		mac := hmac.New(sha256.New, s.Secret)
		mac.Write([]byte(canonical))
		return Key{
			value:     s.prefix() + "h:" + hex.EncodeToString(mac.Sum(nil)),
			namespace: s.Namespace,
			hashed:    true,
		}, nil
	}
	return Key{value: shorten(canonical), namespace: s.Namespace}, nil
}

// MustKey is like Key but panics on error. Use it only with constant parts,
// in tests and examples.
func (s KeySpace) MustKey(parts ...Part) Key {
	k, err := s.Key(parts...)
	if err != nil {
		panic(err)
	}
	return k
}

func (s KeySpace) version() int {
	if s.Version == 0 {
		return 1
	}
	return s.Version
}

func (s KeySpace) prefix() string {
	return s.Namespace + ":v" + strconv.Itoa(s.version()) + ":"
}

func (s KeySpace) canonical(parts []Part) (string, error) {
	if err := validateNamespace(s.Namespace); err != nil {
		return "", err
	}
	if s.Version < 0 {
		return "", &KeyError{Namespace: s.Namespace, Reason: "negative version", Err: ErrInvalidName}
	}
	if len(parts) == 0 {
		return "", &KeyError{Namespace: s.Namespace, Reason: "a key needs at least one business part", Err: ErrNoParts}
	}
	var b strings.Builder
	b.Grow(len(s.Namespace) + 8 + 24*len(parts))
	b.WriteString(s.prefix())
	for i, p := range parts {
		if err := validateName(p.name); err != nil {
			return "", &KeyError{Namespace: s.Namespace, Part: p.name, Reason: err.Error(), Err: ErrInvalidName}
		}
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(p.name)
		if p.isInt {
			b.WriteByte('#')
			b.WriteString(strconv.FormatInt(p.num, 10))
			continue
		}
		if p.str == "" {
			return "", &KeyError{Namespace: s.Namespace, Part: p.name, Reason: "empty value", Err: ErrEmptyPart}
		}
		if !utf8.ValidString(p.str) {
			return "", &KeyError{Namespace: s.Namespace, Part: p.name, Reason: "value is not valid UTF-8", Err: ErrInvalidUTF8}
		}
		b.WriteByte('=')
		escapeValue(&b, p.str)
	}
	return b.String(), nil
}

// shorten keeps keys within MaxKeyLen. Canonical keys are pure ASCII (values
// are escaped), so any byte offset is a valid cut. '~' is always escaped in
// values, so a shortened key can never equal an unshortened one.
func shorten(canonical string) string {
	if len(canonical) <= MaxKeyLen {
		return canonical
	}
	sum := sha256.Sum256([]byte(canonical))
	keep := MaxKeyLen - 1 - hashSuffixLen
	return canonical[:keep] + "~" + hex.EncodeToString(sum[:])[:hashSuffixLen]
}

const hexDigits = "0123456789ABCDEF"

// escapeValue percent-encodes every byte that is not an unreserved printable
// ASCII character, which includes the separators ':', '/', '=', '#', '~' and
// '%' itself. The result is ASCII, safe in an HTTP header.
func escapeValue(b *strings.Builder, v string) {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if isPlain(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0x0f])
	}
}

func isPlain(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c == '-' || c == '_' || c == '.' || c == '@' || c == '+':
		return true
	}
	return false
}

func validateNamespace(ns string) error {
	if ns == "" {
		return &KeyError{Reason: "empty namespace", Err: ErrEmptyNamespace}
	}
	if len(ns) > maxNamespaceLen {
		return &KeyError{Namespace: ns, Reason: fmt.Sprintf("namespace longer than %d bytes", maxNamespaceLen), Err: ErrInvalidName}
	}
	if err := validateIdent(ns); err != nil {
		return &KeyError{Namespace: ns, Reason: "namespace " + err.Error(), Err: ErrInvalidName}
	}
	return nil
}

func validateName(name string) error {
	if name == "" {
		return fmt.Errorf("part name is empty")
	}
	if len(name) > maxNamespaceLen {
		return fmt.Errorf("part name longer than %d bytes", maxNamespaceLen)
	}
	return validateIdent(name)
}

func validateIdent(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("%q must start with a letter or digit", s)
		}
		if !alnum && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%q may hold only letters, digits, '.', '_' and '-'", s)
		}
	}
	return nil
}
