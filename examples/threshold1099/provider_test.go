package threshold1099

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
)

const apiKey = "test-mail-key"

// providerWindow is the fake provider's documented dedup window.
const providerWindow = 24 * time.Hour

// mailProvider is the email provider, faked by httpfake with the
// Idempotency-Key semantics of the IETF HTTPAPI draft, as real providers
// implement them:
//
//   - POST /v1/emails with the API key, a JSON Message and an
//     Idempotency-Key header (400 without one) sends the email and answers
//     200 {"id": "msg_001"}.
//   - The answer is remembered for providerWindow on the test's clock: a
//     repeat with the same body is replayed (Idempotent-Replayed: true) and
//     sends nothing; a repeat with another body is 422. After the window
//     the key is forgotten.
//   - A repeat while the first request is still being processed is 409.
//   - A refused request (an invalid message, a rejected address: 400) is
//     not remembered: like Stripe, the provider stores a result only for
//     a request it executed.
//
// Its Effects are the emails really sent: the ground truth of every test.
type mailProvider struct {
	*httpfake.Receiver

	mu     sync.Mutex
	reject map[string]bool // addresses refused with 400
}

type sentEmail struct {
	ID  string
	Key string
	Message
}

func newMailProvider(t *testing.T, now func() time.Time) *mailProvider {
	t.Helper()
	m := &mailProvider{reject: map[string]bool{}}
	m.Receiver = httpfake.New(&httpfake.Config{
		Pattern:  "POST /v1/emails",
		Window:   providerWindow,
		Now:      now,
		IDPrefix: "msg_",
		Respond:  m.respond,
	})
	t.Cleanup(m.Close) // releases a request still held
	return m
}

func (m *mailProvider) endpoint() string { return m.URL() + "/v1/emails" }

// respond is the provider's own checks of a request that would send.
func (m *mailProvider) respond(r *httpfake.Request) (int, []byte) {
	if r.Header.Get("Authorization") != "Bearer "+apiKey {
		return http.StatusUnauthorized, []byte(`{"error":"unauthorized"}`)
	}
	var msg Message
	if json.Unmarshal(r.Body, &msg) != nil || msg.To == "" {
		return http.StatusBadRequest, []byte(`{"error":"invalid message"}`)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reject[msg.To] {
		return http.StatusBadRequest, []byte(`{"error":"recipient rejected"}`)
	}
	return 0, nil // sent: 200 {"id":"msg_001"}
}

func (m *mailProvider) rejectAddress(addr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reject[addr] = true
}

// sentTo returns the emails really sent to addr.
func (m *mailProvider) sentTo(addr string) []sentEmail {
	var out []sentEmail
	for _, e := range m.AllEffects() {
		var msg Message
		_ = json.Unmarshal(e.Request.Body, &msg) // respond accepted it
		if msg.To == addr {
			out = append(out, sentEmail{ID: e.ID, Key: e.Key, Message: msg})
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
