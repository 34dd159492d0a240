// want package:`headers X-Dedup-Key}$`

// Package client configures httpeffect with its provider's own header name.
package client

import (
	"net/http"
	"strconv"
	"time"

	"github.com/effectonce/effectonce/idempotency/httpeffect"
)

var Config = &httpeffect.Config{HeaderName: "X-Dedup-Key"}

// retry sends by hand what httpeffect sends, but keyed by the clock.
func retry(req *http.Request) {
	req.Header.Set("x-dedup-key", strconv.FormatInt(time.Now().UnixNano(), 36)) // want `^idempotency key derived from the clock: time.Now → .UnixNano → strconv.FormatInt → http.Header.Set\("x-dedup-key"\)$`
}
