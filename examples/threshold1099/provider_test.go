package threshold1099

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

const apiKey = "test-mail-key"

// mailProvider is a fake email provider with the Idempotency-Key semantics
// of the IETF HTTPAPI draft, as real providers implement them:
//
//   - POST /v1/emails with a JSON Message and an Idempotency-Key header
//     (400 without one) sends the email and answers 200 {"id": "msg_N"}.
//   - The answer is remembered for providerWindow (24 hours) by key: a
//     repeat with the same body is replayed (same id, header
//     Idempotent-Replayed: true) and sends nothing; a repeat with another
//     body is 422. After the window the key is forgotten.
//   - A repeat while the first request is still being processed is 409.
//   - A refused request (a rejected address: 400) is not remembered: like
//     Stripe, the provider stores a result only for a request it executed.
//
// sent counts the emails really sent: the ground truth of every test.
type mailProvider struct {
	srv *httptest.Server
	now func() time.Time

	mu         sync.Mutex
	sent       []sentEmail
	byKey      map[string]remembered
	inFlight   map[string]bool
	requests   int
	withoutKey int
	replays    int
	reject     map[string]bool // addresses refused with 400
	gate       *gate           // when set, the next send waits for it
}

// providerWindow is the fake's documented dedup window.
const providerWindow = 24 * time.Hour

type sentEmail struct {
	ID  string
	Key string
	Message
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

func newMailProvider(t *testing.T, now func() time.Time) *mailProvider {
	t.Helper()
	m := &mailProvider{now: now, byKey: map[string]remembered{}, inFlight: map[string]bool{}, reject: map[string]bool{}}
	m.srv = httptest.NewServer(http.HandlerFunc(m.handle))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *mailProvider) endpoint() string { return m.srv.URL + "/v1/emails" }

func (m *mailProvider) handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Header.Get("Idempotency-Key")
	m.mu.Lock()
	m.requests++
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/v1/emails":
		m.mu.Unlock()
		http.NotFound(w, r)
		return
	case r.Header.Get("Authorization") != "Bearer "+apiKey:
		m.mu.Unlock()
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	case key == "":
		m.withoutKey++
		m.mu.Unlock()
		http.Error(w, `{"error":"Idempotency-Key required"}`, http.StatusBadRequest)
		return
	}
	hash := sha256.Sum256(body)
	if prev, ok := m.byKey[key]; ok && m.now().Sub(prev.at) < providerWindow {
		if prev.hash != hash {
			m.mu.Unlock()
			http.Error(w, `{"error":"Idempotency-Key reused with another request"}`, http.StatusUnprocessableEntity)
			return
		}
		m.replays++
		m.mu.Unlock()
		w.Header().Set("Idempotent-Replayed", "true")
		writeJSON(w, prev.id)
		return
	}
	if m.inFlight[key] {
		m.mu.Unlock()
		http.Error(w, `{"error":"a request with this key is in progress"}`, http.StatusConflict)
		return
	}
	m.inFlight[key] = true
	g := m.gate
	m.gate = nil
	m.mu.Unlock()

	if g != nil {
		close(g.entered)
		<-g.release
	}

	var msg Message
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.inFlight, key)
	switch {
	case json.Unmarshal(body, &msg) != nil || msg.To == "":
		http.Error(w, `{"error":"invalid message"}`, http.StatusBadRequest)
	case m.reject[msg.To]:
		http.Error(w, `{"error":"recipient rejected"}`, http.StatusBadRequest)
	default:
		id := fmt.Sprintf("msg_%03d", len(m.sent)+1)
		m.sent = append(m.sent, sentEmail{ID: id, Key: key, Message: msg})
		m.byKey[key] = remembered{id: id, hash: hash, at: m.now()}
		writeJSON(w, id)
	}
}

func writeJSON(w http.ResponseWriter, id string) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, `{"id":%q}`, id)
}

// holdNext makes the next send wait until release is called; entered is
// closed when that send has arrived.
func (m *mailProvider) holdNext(t *testing.T) (entered <-chan struct{}, release func()) {
	g := &gate{entered: make(chan struct{}), release: make(chan struct{})}
	m.mu.Lock()
	m.gate = g
	m.mu.Unlock()
	release = func() { g.once.Do(func() { close(g.release) }) }
	t.Cleanup(release) // before the server closes
	return g.entered, release
}

func (m *mailProvider) sentEmails() []sentEmail {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sentEmail(nil), m.sent...)
}

// sentTo returns the emails really sent to addr.
func (m *mailProvider) sentTo(addr string) []sentEmail {
	var out []sentEmail
	for _, e := range m.sentEmails() {
		if e.To == addr {
			out = append(out, e)
		}
	}
	return out
}

// onlyIDTo returns the message id of the one email sent to addr.
func (m *mailProvider) onlyIDTo(t *testing.T, addr string) string {
	t.Helper()
	sent := m.sentTo(addr)
	if len(sent) != 1 {
		t.Fatalf("%d emails sent to %s, want 1", len(sent), addr)
	}
	return sent[0].ID
}

func (m *mailProvider) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sent)
}

func (m *mailProvider) stats() (requests, withoutKey, replays int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests, m.withoutKey, m.replays
}

// remembers reports whether the provider would still replay key.
func (m *mailProvider) remembers(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, ok := m.byKey[key]
	return ok && m.now().Sub(prev.at) < providerWindow
}

func (m *mailProvider) rejectAddress(addr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reject[addr] = true
}
