// Package headers sets the Idempotency-Key header by hand.
package headers

import (
	"math/rand"
	"net/http"
	"strconv"

	"github.com/google/uuid"
)

func send(req *http.Request) {
	req.Header.Set("idempotency-key", uuid.NewString()) // want `^idempotency key derived from randomness: uuid.NewString → http.Header.Set\("idempotency-key"\)$`
}

func sendRand(req *http.Request, orderID string) { // want sendRand:`^param 1 to sink: \+ → http.Header.Add\("IDEMPOTENCY-KEY"\)$`
	req.Header.Add("IDEMPOTENCY-KEY", orderID+"-"+strconv.Itoa(rand.Intn(1000))) // want `^idempotency key derived from randomness: rand.Intn → strconv.Itoa → \+ → http.Header.Add\("IDEMPOTENCY-KEY"\)$`
}

func sendMap(req *http.Request) {
	req.Header["Idempotency-Key"] = []string{uuid.New().String()} // want `^idempotency key derived from randomness: uuid.New → .String → http.Header\["Idempotency-Key"\]$`
}

// A request id may be random: it is not an idempotency key.
func requestID(req *http.Request) {
	req.Header.Set("X-Request-Id", uuid.NewString())
}

// A deterministic (name-based) UUID of the business id is a fine key.
func nameBased(req *http.Request, orderID string) { // want nameBased:"param 1 to sink"
	req.Header.Set("Idempotency-Key", uuid.NewSHA1(uuid.NameSpaceURL, []byte("refund:"+orderID)).String())
}
