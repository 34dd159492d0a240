package magiclink

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"sync"
	"testing"
	"time"
)

const apiKey = "test-mail-key"

// mailProvider is a fake email provider that deduplicates by the
// Idempotency-Key header, as Resend and Postmark do:
//
//   - POST /emails with a JSON Message and an Idempotency-Key header (400
//     without one) sends the email and answers 200 {"id": "msg_N"}.
//   - The answer is remembered for providerWindow (24 hours) by key: a
//     repeat with the same body is replayed (same id, header
//     Idempotent-Replayed: true) and sends nothing; a repeat with another
//     body is 422.
//   - A repeat while the first request is still being processed is 409.
//   - unavailableNext makes the next send answer 503 with a Retry-After,
//     before acting (nothing remembered).
//
// sent is the ground truth of every test: the emails really sent.
type mailProvider struct {
	srv *httptest.Server
	now func() time.Time

	mu          sync.Mutex
	sent        []sentEmail
	byKey       map[string]remembered
	inFlight    map[string]bool
	requests    []sentEmail // every send request received, with its body
	replays     int
	unavailable []int // Retry-After seconds of the next 503s
	gate        *gate
}

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
	m := &mailProvider{now: now, byKey: map[string]remembered{}, inFlight: map[string]bool{}}
	m.srv = httptest.NewServer(http.HandlerFunc(m.handle))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *mailProvider) endpoint() string { return m.srv.URL + "/emails" }

func (m *mailProvider) handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Header.Get("Idempotency-Key")
	var msg Message
	_ = json.Unmarshal(body, &msg)
	m.mu.Lock()
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/emails":
		m.mu.Unlock()
		http.NotFound(w, r)
		return
	case r.Header.Get("Authorization") != "Bearer "+apiKey:
		m.mu.Unlock()
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	case key == "":
		m.mu.Unlock()
		http.Error(w, `{"error":"Idempotency-Key required"}`, http.StatusBadRequest)
		return
	}
	m.requests = append(m.requests, sentEmail{Key: key, Message: msg})
	if len(m.unavailable) > 0 {
		after := m.unavailable[0]
		m.unavailable = m.unavailable[1:]
		m.mu.Unlock()
		w.Header().Set("Retry-After", fmt.Sprint(after))
		http.Error(w, `{"error":"service unavailable"}`, http.StatusServiceUnavailable)
		return
	}
	hash := sha256.Sum256(body)
	if prev, ok := m.byKey[key]; ok && m.now().Sub(prev.at) < providerWindow {
		defer m.mu.Unlock()
		if prev.hash != hash {
			http.Error(w, `{"error":"Idempotency-Key reused with another request"}`, http.StatusUnprocessableEntity)
			return
		}
		m.replays++
		w.Header().Set("Idempotent-Replayed", "true")
		writeID(w, prev.id)
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

	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.inFlight, key)
	if msg.To == "" {
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

// unavailableNext makes the next send answer 503 Retry-After: seconds.
func (m *mailProvider) unavailableNext(seconds int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unavailable = append(m.unavailable, seconds)
}

// count is the number of emails really sent.
func (m *mailProvider) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sent)
}

func (m *mailProvider) sentEmails() []sentEmail {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sentEmail(nil), m.sent...)
}

func (m *mailProvider) received() []sentEmail {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sentEmail(nil), m.requests...)
}

func (m *mailProvider) replayCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.replays
}

var linkRE = regexp.MustCompile(`https://\S+`)

// tokenIn returns the token of the link in a message's text.
func tokenIn(t *testing.T, msg Message) string {
	t.Helper()
	link := linkRE.FindString(msg.Text)
	u, err := url.Parse(link)
	if err != nil || link == "" {
		t.Fatalf("no link in %q", msg.Text)
	}
	return u.Query().Get("token")
}
