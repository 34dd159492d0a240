package checkoutwebhook

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

const licenseAPIKey = "test-license-key"

// licenseService is a fake license (entitlement) service that deduplicates
// by the Idempotency-Key header:
//
//   - POST /v1/licenses with a JSON Grant and an Idempotency-Key header
//     (400 without one) grants a license and answers 201 {"id": "lic_N"}.
//   - The answer is remembered for serviceWindow (24 hours) by key: a
//     repeat with the same body is replayed (same id, header
//     Idempotent-Replayed: true) and grants nothing; a repeat with another
//     body is 422. After the window the key is forgotten.
//   - A repeat while the first request is still being processed is 409.
//   - unavailableNext makes the next grant answer 503 with a Retry-After,
//     before acting; refuse makes grants to an account 400 (not
//     remembered).
//
// licenses is the ground truth of every test: the grants really made.
type licenseService struct {
	srv *httptest.Server
	now func() time.Time

	mu          sync.Mutex
	licenses    []license
	byKey       map[string]remembered
	inFlight    map[string]bool
	requests    int
	replays     int
	unavailable []int
	refused     map[string]bool
	gate        *gate
}

const serviceWindow = 24 * time.Hour

type license struct {
	ID  string
	Key string
	Grant
}

type remembered struct {
	id   string
	hash [32]byte
	at   time.Time
}

type gate struct {
	entered, release chan struct{}
	once             sync.Once
}

func newLicenseService(t *testing.T, now func() time.Time) *licenseService {
	t.Helper()
	s := &licenseService{now: now, byKey: map[string]remembered{}, inFlight: map[string]bool{}, refused: map[string]bool{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.handle))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *licenseService) url() string { return s.srv.URL + "/v1/licenses" }

func (s *licenseService) handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Header.Get("Idempotency-Key")
	s.mu.Lock()
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/v1/licenses":
		s.mu.Unlock()
		http.NotFound(w, r)
		return
	case r.Header.Get("Authorization") != "Bearer "+licenseAPIKey:
		s.mu.Unlock()
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	case key == "":
		s.mu.Unlock()
		http.Error(w, `{"error":"Idempotency-Key required"}`, http.StatusBadRequest)
		return
	}
	s.requests++
	if len(s.unavailable) > 0 {
		after := s.unavailable[0]
		s.unavailable = s.unavailable[1:]
		s.mu.Unlock()
		w.Header().Set("Retry-After", fmt.Sprint(after))
		http.Error(w, `{"error":"service unavailable"}`, http.StatusServiceUnavailable)
		return
	}
	hash := sha256.Sum256(body)
	if prev, ok := s.byKey[key]; ok && s.now().Sub(prev.at) < serviceWindow {
		defer s.mu.Unlock()
		if prev.hash != hash {
			http.Error(w, `{"error":"Idempotency-Key reused with another request"}`, http.StatusUnprocessableEntity)
			return
		}
		s.replays++
		w.Header().Set("Idempotent-Replayed", "true")
		writeID(w, http.StatusOK, prev.id)
		return
	}
	if s.inFlight[key] {
		s.mu.Unlock()
		http.Error(w, `{"error":"a request with this key is in progress"}`, http.StatusConflict)
		return
	}
	s.inFlight[key] = true
	g := s.gate
	s.gate = nil
	s.mu.Unlock()

	if g != nil {
		close(g.entered)
		<-g.release
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inFlight, key)
	var grant Grant
	switch {
	case json.Unmarshal(body, &grant) != nil || grant.Account == "":
		http.Error(w, `{"error":"invalid grant"}`, http.StatusBadRequest)
	case s.refused[grant.Account]:
		http.Error(w, `{"error":"account closed"}`, http.StatusBadRequest)
	default:
		id := fmt.Sprintf("lic_%03d", len(s.licenses)+1)
		s.licenses = append(s.licenses, license{ID: id, Key: key, Grant: grant})
		s.byKey[key] = remembered{id: id, hash: hash, at: s.now()}
		writeID(w, http.StatusCreated, id)
	}
}

func writeID(w http.ResponseWriter, status int, id string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"id":%q}`, id)
}

// holdNext makes the next grant wait until release is called; entered is
// closed when it has arrived.
func (s *licenseService) holdNext(t *testing.T) (entered <-chan struct{}, release func()) {
	g := &gate{entered: make(chan struct{}), release: make(chan struct{})}
	s.mu.Lock()
	s.gate = g
	s.mu.Unlock()
	release = func() { g.once.Do(func() { close(g.release) }) }
	t.Cleanup(release) // before the server closes
	return g.entered, release
}

func (s *licenseService) unavailableNext(seconds int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavailable = append(s.unavailable, seconds)
}

func (s *licenseService) refuse(account string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refused[account] = true
}

// count is the number of licenses really granted.
func (s *licenseService) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.licenses)
}

func (s *licenseService) granted() []license {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]license(nil), s.licenses...)
}

func (s *licenseService) stats() (requests, replays int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, s.replays
}
