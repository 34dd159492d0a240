// Package sender imports a package whose httpeffect.Config names the
// header, and sets that header itself.
package sender

import (
	"net/http"

	"github.com/google/uuid"

	"example.com/customheader/client"
)

var _ = client.Config

func send(req *http.Request) {
	req.Header.Set("X-Dedup-Key", uuid.NewString()) // want `^idempotency key derived from randomness: uuid.NewString → http.Header.Set\("X-Dedup-Key"\)$`
	req.Header.Set("X-Other", uuid.NewString())
}
