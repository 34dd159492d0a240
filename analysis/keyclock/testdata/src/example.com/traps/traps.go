// Package traps holds the ways teams derive keys from the clock or from
// randomness without writing time.Now into the key's own expression.
package traps

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/stripe/stripe-go/v76"

	"github.com/effectonce/effectonce/idempotency"
)

var keys = idempotency.KeySpace{Namespace: "traps"}

func formatInt(user string) idempotency.Key { // want formatInt:"param 0 to sink"
	return keys.MustKey(idempotency.Str("user", user), idempotency.Str("epoch", strconv.FormatInt(time.Now().Unix()/86400, 10))) // want `the clock: time.Now → .Unix → / → strconv.FormatInt → idempotency.Str\("epoch"\)$`
}

func joined(user string) idempotency.Key { // want joined:"param 0 to sink"
	raw := strings.Join([]string{"promo", user, time.Now().Format("2006-01-02")}, ":")
	return keys.MustKey(idempotency.Str("raw", raw)) // want `the clock: time.Now → .Format → strings.Join → idempotency.Str\("raw"\)$`
}

func randSuffix(req *http.Request, order string) { // want randSuffix:"param 1 to sink"
	req.Header.Set("Idempotency-Key", fmt.Sprintf("%s-%d", order, mrand.Intn(1_000_000))) // want `randomness: rand.Intn → fmt.Sprintf → http.Header.Set\("Idempotency-Key"\)$`
}

func cryptoHex(p *stripe.Params) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	p.SetIdempotencyKey(hex.EncodeToString(b)) // want `randomness: crypto/rand.Read → hex.EncodeToString → stripe.Params.SetIdempotencyKey$`
}

func cryptoArray() idempotency.Part { // want cryptoArray:`^result from randomness: crypto/rand.Read → hex.EncodeToString → idempotency.Str\("nonce"\)$`
	var b [8]byte
	_, _ = rand.Read(b[:])
	return idempotency.Str("nonce", hex.EncodeToString(b[:])) // want `randomness: crypto/rand.Read → hex.EncodeToString → idempotency.Str\("nonce"\)$`
}

func cryptoText() idempotency.Part { // want cryptoText:"result from randomness"
	return idempotency.Str("nonce", rand.Text()) // want `randomness: crypto/rand.Text → idempotency.Str\("nonce"\)$`
}

func builder(user string) idempotency.Part { // want builder:"param 0 to result; param 0 to sink"
	var sb strings.Builder
	sb.WriteString(user)
	fmt.Fprintf(&sb, "-%d", time.Now().YearDay())
	return idempotency.Str("k", sb.String()) // want `the clock: time.Now → .YearDay → fmt.Fprintf → .String → idempotency.Str\("k"\)$`
}

func hashed() idempotency.Part { // want hashed:"result from the clock"
	sum := sha256.Sum256([]byte(time.Now().String()))
	return idempotency.Str("h", hex.EncodeToString(sum[:])) // want `the clock: time.Now → .String → sha256.Sum256 → hex.EncodeToString → idempotency.Str\("h"\)$`
}

func elapsed(start time.Time) idempotency.Part { // want elapsed:`^result from the clock: time.Since → .Milliseconds → idempotency.Int\("ms"\); param 0 to result; param 0 to sink: time.Since → .Milliseconds → idempotency.Int\("ms"\)$`
	return idempotency.Int("ms", time.Since(start).Milliseconds()) // want `the clock: time.Since → .Milliseconds → idempotency.Int\("ms"\)$`
}

func namespace(user string) idempotency.Key { // want namespace:"param 0 to sink"
	ks := idempotency.KeySpace{Namespace: "promo-" + time.Now().Format("2006")}
	return ks.MustKey(idempotency.Str("user", user)) // want `the clock: time.Now → .Format → \+ → idempotency.KeySpace.MustKey$`
}

func secret(user string) idempotency.Key { // want secret:"param 0 to sink"
	s := make([]byte, 32)
	_, _ = rand.Read(s)
	ks := idempotency.KeySpace{Namespace: "promo", Secret: s}
	return ks.MustKey(idempotency.Str("user", user)) // want `randomness: crypto/rand.Read → idempotency.KeySpace.MustKey$`
}

func seededByClock() idempotency.Part { // want seededByClock:"result from the clock"
	r := mrand.New(mrand.NewSource(time.Now().UnixNano()))
	return idempotency.Int("n", int64(r.Intn(10))) // want `the clock: time.Now → .UnixNano → rand.NewSource → rand.New → .Intn → idempotency.Int\("n"\)$`
}

func derived(req *http.Request, user string) { // want derived:"param 1 to sink"
	k := keys.MustKey(idempotency.Str("user", user), idempotency.Int("day", int64(time.Now().Day()))) // want `the clock: time.Now → .Day → idempotency.Int\("day"\)$`
	req.Header.Set("Idempotency-Key", k.UUID())
	_ = k.WithGeneration(2)
}

func generation(user string) idempotency.Key { // want generation:"param 0 to sink"
	k := keys.MustKey(idempotency.Str("user", user))
	return k.WithGeneration(time.Now().Second()) // want `the clock: time.Now → .Second → idempotency.Key.WithGeneration$`
}

func fromString() (idempotency.Key, error) { // want fromString:"result r0 from randomness"
	return idempotency.FromString("ns", uuid.NewString()) // want `randomness: uuid.NewString → idempotency.FromString\("ns"\)$`
}

func branch(p *stripe.Params, order string, retry bool) { // want branch:"param 1 to sink"
	key := "refund-" + order
	if retry {
		key = uuid.NewString()
	}
	p.SetIdempotencyKey(key) // want `randomness: uuid.NewString → stripe.Params.SetIdempotencyKey$`
}

func appended(user string) (idempotency.Key, error) { // want appended:"param 0 to sink"
	parts := []idempotency.Part{idempotency.Str("user", user)}
	parts = append(parts, idempotency.Int("day", int64(time.Now().Weekday()))) // want `the clock: time.Now → .Weekday → idempotency.Int\("day"\)$`
	return keys.Key(parts...)
}

func viaMap() idempotency.Part { // want viaMap:"result from the clock"
	m := map[string]string{}
	m["ts"] = time.Now().String()
	return idempotency.Str("ts", m["ts"]) // want `the clock: time.Now → .String → idempotency.Str\("ts"\)$`
}

func readFull() idempotency.Part { // want readFull:"result from randomness"
	b := make([]byte, 8)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		panic(err)
	}
	return idempotency.Str("n", base64.RawURLEncoding.EncodeToString(b)) // want `randomness: crypto/rand.Reader → io.ReadFull → .EncodeToString → idempotency.Str\("n"\)$`
}

func putUvarint() idempotency.Part { // want putUvarint:"result from the clock"
	buf := make([]byte, binary.MaxVarintLen64)
	binary.PutUvarint(buf, uint64(time.Now().Unix()))
	return idempotency.Str("v", hex.EncodeToString(buf)) // want `the clock: time.Now → .Unix → binary.PutUvarint → hex.EncodeToString → idempotency.Str\("v"\)$`
}

func macOfTime(secret []byte) idempotency.Part { // want macOfTime:"result from the clock.*param 0 to result; param 0 to sink"
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(time.Now().Format(time.RFC3339)))
	return idempotency.Str("mac", hex.EncodeToString(h.Sum(nil))) // want `the clock: time.Now → .Format → .Write → .Sum → hex.EncodeToString → idempotency.Str\("mac"\)$`
}
