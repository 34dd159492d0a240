package remediate

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

const mailAPIKey = "test-mail-key"

// mailProvider is a fake email provider that deduplicates by the
// Idempotency-Key header, as threshold1099's does:
//
//   - POST /v1/emails with a JSON Message and a key (400 without one) sends
//     the email and answers 200 {"id": "msg_N"}.
//   - The answer is remembered for 24 hours by key: a repeat with the same
//     body is replayed (same id, Idempotent-Replayed: true) and sends
//     nothing; a repeat with another body is 422.
//   - Requests are handled one at a time, so a repeat never meets the
//     first still in progress.
//
// sent is the ground truth: the emails really sent.
type mailProvider struct {
	srv *httptest.Server
	now func() time.Time

	mu       sync.Mutex
	sent     []sentEmail
	byKey    map[string]remembered
	requests int
	replays  int
}

type sentEmail struct {
	ID, Key string
	Message
}

type remembered struct {
	id   string
	hash [32]byte
	at   time.Time
}

func newMailProvider(t testing.TB, now func() time.Time) *mailProvider {
	t.Helper()
	m := &mailProvider{now: now, byKey: map[string]remembered{}}
	m.srv = httptest.NewServer(http.HandlerFunc(m.handle))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *mailProvider) endpoint() string { return m.srv.URL + "/v1/emails" }

func (m *mailProvider) handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Header.Get("Idempotency-Key")
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests++
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/v1/emails":
		http.NotFound(w, r)
		return
	case r.Header.Get("Authorization") != "Bearer "+mailAPIKey:
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	case key == "":
		http.Error(w, `{"error":"Idempotency-Key required"}`, http.StatusBadRequest)
		return
	}
	hash := sha256.Sum256(body)
	if prev, ok := m.byKey[key]; ok && m.now().Sub(prev.at) < 24*time.Hour {
		if prev.hash != hash {
			http.Error(w, `{"error":"Idempotency-Key reused with another request"}`, http.StatusUnprocessableEntity)
			return
		}
		m.replays++
		w.Header().Set("Idempotent-Replayed", "true")
		writeID(w, prev.id)
		return
	}
	var msg Message
	if json.Unmarshal(body, &msg) != nil || msg.To == "" {
		http.Error(w, `{"error":"invalid message"}`, http.StatusBadRequest)
		return
	}
	id := fmt.Sprintf("msg_%03d", len(m.sent)+1)
	m.sent = append(m.sent, sentEmail{ID: id, Key: key, Message: msg})
	m.byKey[key] = remembered{id: id, hash: hash, at: m.now()}
	writeID(w, id)
}

func writeID(w http.ResponseWriter, id string) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, `{"id":%q}`, id)
}

func (m *mailProvider) sentEmails() []sentEmail {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sentEmail(nil), m.sent...)
}

// requestCount is every request that reached the provider, replays and
// refusals included: the provider calls a run made.
func (m *mailProvider) requestCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests
}

// distinctKeys is how many keys the provider sent an email for.
func (m *mailProvider) distinctKeys() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byKey)
}
