// Package httpeffect is a stub of the library's HTTP adapter.
package httpeffect

const DefaultHeaderName = "Idempotency-Key"

type Config struct {
	HeaderName string
	MaxBody    int64
}
