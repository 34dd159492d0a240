package keyclock

import (
	"go/types"
	"regexp"
	"strings"
)

// Import paths the analyzer knows by name. Packages are matched by path
// string, never imported, so the analyzer adds no dependency on them.
const (
	idempotencyPath = "github.com/effectonce/effectonce/idempotency"
	httpeffectPath  = "github.com/effectonce/effectonce/idempotency/httpeffect"
	uuidPath        = "github.com/google/uuid"
)

// defaultHeader always carries an idempotency key, whatever its case.
const defaultHeader = "Idempotency-Key"

// stripePath matches stripe-go's root package in any major version.
var stripePath = regexp.MustCompile(`^github\.com/stripe/stripe-go(/v[0-9]+)?$`)

// origin says where a tainted value comes from.
type origin uint8

const (
	fromClock origin = iota + 1
	fromRandom
	fromConfigured
	fromParam // a parameter of the function being summarised
)

func (o origin) String() string {
	switch o {
	case fromClock:
		return "the clock"
	case fromRandom:
		return "randomness"
	case fromConfigured:
		return "a -sources function"
	}
	return "a parameter"
}

// callee is what the analyzer needs to know about the target of a call.
type callee struct {
	pkg  string // import path of the declaring package; "" for builtins
	name string // package name, for labels
	recv string // name of the receiver's named type; "" for functions
	fn   string // function or method name
}

// label is how a call appears in a report's path: ".Unix" for a method,
// "fmt.Sprintf" for a function.
func (c callee) label() string {
	switch {
	case c.recv != "":
		return "." + c.fn
	case c.pkg == "":
		return c.fn
	case c.pkg == "crypto/rand":
		return "crypto/rand." + c.fn
	}
	return c.name + "." + c.fn
}

// qualified is "idempotency.KeySpace.Key" or "idempotency.Int".
func (c callee) qualified() string {
	if c.recv != "" {
		return c.name + "." + c.recv + "." + c.fn
	}
	return c.name + "." + c.fn
}

// source reports whether a call to c produces a clock- or random-derived
// value on its own, whatever its arguments, and of which kind.
func (a *checker) source(c callee) (origin, bool) {
	if a.extraSources[c.pkg+"."+c.recvDot()+c.fn] {
		return fromConfigured, true
	}
	switch c.pkg {
	case "time":
		if c.recv == "" && (c.fn == "Now" || c.fn == "Since" || c.fn == "Until") {
			return fromClock, true
		}
	case "math/rand", "math/rand/v2":
		// The package-level functions draw from the shared, randomly
		// seeded generator. Constructors (New, NewSource, NewPCG, ...)
		// and methods only pass their seed's taint along.
		if c.recv == "" && !strings.HasPrefix(c.fn, "New") {
			return fromRandom, true
		}
	case "crypto/rand":
		if c.recv == "" {
			return fromRandom, true
		}
	case uuidPath:
		switch c.fn {
		case "New", "NewString", "NewRandom", "NewRandomFromReader", "NewUUID",
			"NewV6", "NewV7", "NewV7FromReader", "NewDCEGroup", "NewDCEPerson", "NewDCESecurity":
			if c.recv == "" {
				return fromRandom, true
			}
		}
	}
	return 0, false
}

func (c callee) recvDot() string {
	if c.recv == "" {
		return ""
	}
	return c.recv + "."
}

// transparentPackages transform data without adding to it: a result computed
// from a tainted argument or receiver is tainted.
var transparentPackages = map[string]bool{
	"time": true, "fmt": true, "strconv": true, "strings": true, "bytes": true,
	"unicode": true, "unicode/utf8": true, "unicode/utf16": true,
	"encoding/hex": true, "encoding/base64": true, "encoding/base32": true,
	"encoding/binary": true, "encoding/json": true,
	"math": true, "math/big": true, "math/bits": true, "math/rand": true, "math/rand/v2": true,
	"path": true, "path/filepath": true, "net/url": true,
	"crypto/sha256": true, "crypto/sha1": true, "crypto/sha512": true, "crypto/md5": true,
	"crypto/hmac": true, "hash": true, "hash/fnv": true, "hash/crc32": true, "hash/crc64": true,
	"slices": true, "sort": true, "io": true, uuidPath: true,
}

// transparent reports whether calls to c carry taint from arguments to
// result.
func transparent(c callee) bool {
	if c.pkg == "" && c.recv == "" {
		switch c.fn {
		case "append", "copy", "min", "max", "real", "imag", "complex":
			return true
		}
		return false // len and cap do not depend on the elements' values
	}
	return transparentPackages[c.pkg] || stripePath.MatchString(c.pkg)
}

// destination returns the index, among a call's arguments (the receiver
// first for a method), of the argument that a transparent call writes its
// other arguments into, or -1.
func destination(c callee, nargs int) int {
	switch {
	case c.pkg == "" && c.fn == "copy":
		return 0
	case c.pkg == "fmt" && strings.HasPrefix(c.fn, "Fprint"),
		c.pkg == "io" && c.recv == "" && (c.fn == "WriteString" || strings.HasPrefix(c.fn, "Copy")):
		return 0
	case c.recv != "" && strings.HasPrefix(c.fn, "Write"):
		return 0 // strings.Builder, bytes.Buffer, hash.Hash, io.Writer
	case strings.HasPrefix(c.fn, "Put") || c.fn == "Encode" || c.fn == "Read":
		// binary.PutUvarint(buf, x), ByteOrder.PutUint64(buf, x),
		// hex.Encode(dst, src), Encoding.Encode(dst, src), r.Read(buf).
		i := 0
		if c.recv != "" {
			i = 1
		}
		if i < nargs {
			return i
		}
	case c.pkg == "io" && (c.fn == "ReadFull" || c.fn == "ReadAtLeast"):
		return 1
	}
	return -1
}

// keySink reports whether c builds a key or a part of one: any function or
// method of package idempotency returning a Key or a Part (Str, Int,
// KeySpace.Key, KeySpace.MustKey, a method deriving a Key from a Key), and
// any method of KeySpace. Methods reading a Key (String, Namespace) are not
// sinks: their results carry the key's taint on, already reported.
func keySink(c callee, sig *types.Signature) bool {
	if c.pkg != idempotencyPath {
		return false
	}
	if c.recv == "KeySpace" {
		return true
	}
	for v := range sig.Results().Variables() {
		if n, ok := types.Unalias(v.Type()).(*types.Named); ok {
			if obj := n.Obj(); obj.Pkg() != nil && obj.Pkg().Path() == idempotencyPath && (obj.Name() == "Key" || obj.Name() == "Part") {
				return true
			}
		}
	}
	return false
}

// stripeSink reports whether c is stripe-go's Params.SetIdempotencyKey.
func stripeSink(c callee) bool {
	return c.fn == "SetIdempotencyKey" && stripePath.MatchString(c.pkg)
}

// headerType reports whether t is net/http.Header or textproto.MIMEHeader.
func headerType(t types.Type) bool {
	n, ok := types.Unalias(t).(*types.Named)
	if !ok || n.Obj().Pkg() == nil {
		return false
	}
	switch n.Obj().Pkg().Path() + "." + n.Obj().Name() {
	case "net/http.Header", "net/textproto.MIMEHeader":
		return true
	}
	return false
}

// namedField returns the import path and name of the named struct type
// whose field an address selects, and the field's name.
func namedField(ptr types.Type, field int) (pkg, typ, name string, ok bool) {
	p, isPtr := types.Unalias(ptr).Underlying().(*types.Pointer)
	if !isPtr {
		return "", "", "", false
	}
	n, isNamed := types.Unalias(p.Elem()).(*types.Named)
	if !isNamed || n.Obj().Pkg() == nil {
		return "", "", "", false
	}
	st, isStruct := n.Underlying().(*types.Struct)
	if !isStruct || field >= st.NumFields() {
		return "", "", "", false
	}
	return n.Obj().Pkg().Path(), n.Obj().Name(), st.Field(field).Name(), true
}
