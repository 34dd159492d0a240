// Package idempotency is a stub of the library's key builder, with the
// signatures the analyzer matches.
package idempotency

type KeySpace struct {
	Namespace string
	Version   int
	Secret    []byte
}

type Part struct {
	name, str string
	num       int64
}

func Str(name, value string) Part { return Part{name: name, str: value} }

func Int(name string, value int64) Part { return Part{name: name, num: value} }

type Key struct{ value string }

func (k Key) String() string { return k.value }

// UUID stands for a method another engineer may add: a key derived from a
// Key.
func (k Key) UUID() string { return k.value }

// WithGeneration stands for a suffix a future version may add.
func (k Key) WithGeneration(g int) Key { return Key{value: k.value} }

func (s KeySpace) Key(parts ...Part) (Key, error) { return Key{value: s.Namespace}, nil }

func (s KeySpace) MustKey(parts ...Part) Key { return Key{value: s.Namespace} }

// FromString stands for another function that builds a Key.
func FromString(ns, raw string) (Key, error) { return Key{value: ns + raw}, nil }

// Retryable returns neither a Key nor a Part: not a sink.
func Retryable(err error, after int64) error { return err }
