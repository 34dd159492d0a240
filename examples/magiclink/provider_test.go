package magiclink

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
)

const apiKey = "test-mail-key"

const providerWindow = 24 * time.Hour

// mailProvider is an email provider that deduplicates by the
// Idempotency-Key header, as Resend and Postmark do, faked by httpfake:
//
//   - POST /emails with the API key, a JSON Message and an Idempotency-Key
//     header (400 without one) sends the email and answers 200
//     {"id": "msg_001"}.
//   - The answer is remembered for providerWindow on the test's clock: a
//     repeat with the same body is replayed (Idempotent-Replayed: true)
//     and sends nothing; a repeat with another body is 422.
//   - A repeat while the first request is still being processed is 409.
//   - AnswerNext(503) makes the next send answer 503 with a Retry-After
//     of 30 seconds, before acting (nothing remembered).
//
// Its Effects are the ground truth of every test: the emails really sent.
type mailProvider struct{ *httpfake.Receiver }

type sentEmail struct {
	ID  string
	Key string
	Message
}

func newMailProvider(t *testing.T, now func() time.Time) *mailProvider {
	t.Helper()
	m := &mailProvider{httpfake.New(&httpfake.Config{
		Pattern:    "POST /emails",
		Window:     providerWindow,
		Now:        now,
		IDPrefix:   "msg_",
		RetryAfter: 30 * time.Second,
		Respond:    respond,
	})}
	t.Cleanup(m.Close) // releases a request still held
	return m
}

func (m *mailProvider) endpoint() string { return m.URL() + "/emails" }

// respond is the provider's own checks of a request that would send.
func respond(r *httpfake.Request) (int, []byte) {
	if r.Header.Get("Authorization") != "Bearer "+apiKey {
		return http.StatusUnauthorized, []byte(`{"error":"unauthorized"}`)
	}
	if msg := messageOf(r.Body); msg.To == "" {
		return http.StatusBadRequest, []byte(`{"error":"invalid message"}`)
	}
	return 0, nil // sent: 200 {"id":"msg_001"}
}

func messageOf(body []byte) Message {
	var msg Message
	_ = json.Unmarshal(body, &msg)
	return msg
}

// sentEmails returns the emails really sent.
func (m *mailProvider) sentEmails() []sentEmail {
	var out []sentEmail
	for _, e := range m.AllEffects() {
		out = append(out, sentEmail{ID: e.ID, Key: e.Key, Message: messageOf(e.Request.Body)})
	}
	return out
}

// received returns every send request received, with its body.
func (m *mailProvider) received() []sentEmail {
	var out []sentEmail
	for _, r := range m.AllRequests() {
		out = append(out, sentEmail{Key: r.Key, Message: messageOf(r.Body)})
	}
	return out
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
