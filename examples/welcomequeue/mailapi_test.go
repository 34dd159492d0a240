package welcomequeue_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/effectonce/effectonce/examples/welcomequeue"
)

// mailAPI is a fake mail API that deduplicates by Idempotency-Key, as the
// real one does for 24 hours: a key it has sent under is answered with the
// first answer again (Idempotent-Replayed: true), and nothing is sent.
type mailAPI struct {
	srv *httptest.Server

	mu   sync.Mutex
	sent map[string]string // Idempotency-Key -> message id, for emails sent
	to   map[string]string // Idempotency-Key -> recipient
	hits int
	// answer, when set, is asked first about every request that is not a
	// replay, with the request's number (from 1): a status it returns is
	// the answer and nothing is sent; 0 lets the request through. It runs
	// without the lock, so it may block.
	answer func(n int, key string, e welcomequeue.Email) int
}

func newMailAPI(t *testing.T) *mailAPI {
	t.Helper()
	m := &mailAPI{sent: map[string]string{}, to: map[string]string{}}
	m.srv = httptest.NewServer(http.HandlerFunc(m.serve))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *mailAPI) serve(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	var e welcomequeue.Email
	if key == "" || json.NewDecoder(r.Body).Decode(&e) != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	m.mu.Lock()
	m.hits++
	n, answer := m.hits, m.answer
	id, replay := m.sent[key]
	m.mu.Unlock()
	if replay {
		w.Header().Set("Idempotent-Replayed", "true")
		_ = json.NewEncoder(w).Encode(map[string]string{"id": id})
		return
	}
	if answer != nil {
		if status := answer(n, key, e); status != 0 {
			http.Error(w, http.StatusText(status), status)
			return
		}
	}
	m.mu.Lock()
	id, replay = m.sent[key]
	if !replay {
		id = fmt.Sprintf("msg_%d", len(m.sent)+1)
		m.sent[key], m.to[key] = id, e.To
	}
	m.mu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]string{"id": id})
}

// setAnswer sets answer (see mailAPI).
func (m *mailAPI) setAnswer(fn func(n int, key string, e welcomequeue.Email) int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.answer = fn
}

// emails is the number of distinct emails sent: distinct keys, never
// requests (a replay under the same key hits the API again and sends
// nothing).
func (m *mailAPI) emails() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sent)
}

// requests is the number of requests that reached the API.
func (m *mailAPI) requests() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hits
}
