package remediate

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
)

const mailAPIKey = "test-mail-key"

// mailProvider is an email provider that deduplicates by the
// Idempotency-Key header, as threshold1099's does, faked by httpfake:
//
//   - POST /v1/emails with the API key, a JSON Message and a key (400
//     without one) sends the email and answers 200 {"id": "msg_001"}.
//   - The answer is remembered for 24 hours on the test's clock: a repeat
//     with the same body is replayed (Idempotent-Replayed: true) and
//     sends nothing; a repeat with another body is 422.
//
// Its Effects are the ground truth: the emails really sent. Requests
// counts every request, replays and refusals included: the provider calls
// a run made.
type mailProvider struct{ *httpfake.Receiver }

type sentEmail struct {
	ID, Key string
	Message
}

func newMailProvider(t testing.TB, now func() time.Time) *mailProvider {
	t.Helper()
	m := &mailProvider{httpfake.New(&httpfake.Config{
		Pattern:  "POST /v1/emails",
		Window:   24 * time.Hour,
		Now:      now,
		IDPrefix: "msg_",
		Respond: func(r *httpfake.Request) (int, []byte) {
			if r.Header.Get("Authorization") != "Bearer "+mailAPIKey {
				return http.StatusUnauthorized, []byte(`{"error":"unauthorized"}`)
			}
			var msg Message
			if json.Unmarshal(r.Body, &msg) != nil || msg.To == "" {
				return http.StatusBadRequest, []byte(`{"error":"invalid message"}`)
			}
			return 0, nil // sent: 200 {"id":"msg_001"}
		},
	})}
	t.Cleanup(m.Close)
	return m
}

func (m *mailProvider) endpoint() string { return m.URL() + "/v1/emails" }

// sentEmails returns the emails really sent.
func (m *mailProvider) sentEmails() []sentEmail {
	var out []sentEmail
	for _, e := range m.AllEffects() {
		var msg Message
		_ = json.Unmarshal(e.Request.Body, &msg) // the provider accepted it
		out = append(out, sentEmail{ID: e.ID, Key: e.Key, Message: msg})
	}
	return out
}
