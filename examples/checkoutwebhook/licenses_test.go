package checkoutwebhook

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
)

const licenseAPIKey = "test-license-key"

const serviceWindow = 24 * time.Hour

// licenseService is a license (entitlement) service that deduplicates by
// the Idempotency-Key header, faked by httpfake:
//
//   - POST /v1/licenses with the API key, a JSON Grant and an
//     Idempotency-Key header (400 without one) grants a license and
//     answers 201 {"id": "lic_001"}.
//   - The answer is remembered for serviceWindow on the test's clock: a
//     repeat with the same body is replayed (Idempotent-Replayed: true)
//     and grants nothing; a repeat with another body is 422. After the
//     window the key is forgotten.
//   - A repeat while the first request is still being processed is 409.
//   - AnswerNext(503) makes the next grant answer 503 with a Retry-After
//     of 120 seconds, before acting; refuse makes grants to an account
//     400 (not remembered).
//
// Its Effects are the ground truth of every test: the grants really made.
type licenseService struct {
	*httpfake.Receiver

	mu      sync.Mutex
	refused map[string]bool
}

func newLicenseService(t *testing.T, now func() time.Time) *licenseService {
	t.Helper()
	s := &licenseService{refused: map[string]bool{}}
	s.Receiver = httpfake.New(&httpfake.Config{
		Pattern:    "POST /v1/licenses",
		Window:     serviceWindow,
		Now:        now,
		IDPrefix:   "lic_",
		RetryAfter: 120 * time.Second,
		Respond:    s.respond,
	})
	t.Cleanup(s.Close) // releases a request still held
	return s
}

func (s *licenseService) url() string { return s.URL() + "/v1/licenses" }

// respond is the service's own checks of a request that would grant.
func (s *licenseService) respond(r *httpfake.Request) (int, []byte) {
	if r.Header.Get("Authorization") != "Bearer "+licenseAPIKey {
		return http.StatusUnauthorized, []byte(`{"error":"unauthorized"}`)
	}
	var grant Grant
	if json.Unmarshal(r.Body, &grant) != nil || grant.Account == "" {
		return http.StatusBadRequest, []byte(`{"error":"invalid grant"}`)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refused[grant.Account] {
		return http.StatusBadRequest, []byte(`{"error":"account closed"}`)
	}
	return http.StatusCreated, nil // granted: 201 {"id":"lic_001"}
}

func (s *licenseService) refuse(account string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refused[account] = true
}
