package payout

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
)

const apiKey = "test-payouts-key"

// providerWindow is the fake's documented dedup window.
const providerWindow = 24 * time.Hour

// payoutsProvider is a payouts API that takes its idempotency key only as
// a UUID in the request body, as transfer APIs do (a "customer
// transaction id"), faked by httpfake with a Key read from the body:
//
//   - POST /v1/transfers with a JSON TransferRequest. client_transaction_id
//     must be a UUID (400 otherwise: a key like "payouts.transfer:v1:..."
//     is refused). A new id makes a transfer and answers 201 with it.
//   - The id is remembered for providerWindow on the test's clock: a
//     repeat with the same body is answered with the first answer
//     (Idempotent-Replayed: true) and moves no money; a repeat with another
//     body is 422. After the window the id is forgotten and a repeat makes
//     a second transfer: the hazard the ledger must never reach.
//   - A repeat while the first request is still being processed is 409.
//   - Like Stripe, it saves the first answer under an id once it started
//     executing, a 500 included (FailAndRemember): every repeat under that
//     id is answered 500 with Idempotent-Replayed: true.
//   - A refused request (an unknown recipient: 400) is not remembered.
//   - GET /v1/transfers?reference=<uuid> lists the transfers carrying that
//     reference, whatever their client_transaction_id, for ever: the
//     lookup Find uses, served from the receiver's effects.
//
// Its Effects are the ground truth of every test: the money really moved.
type payoutsProvider struct {
	*httpfake.Receiver

	lists  atomic.Int64
	mu     sync.Mutex
	reject map[string]bool // recipients refused with 400
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func newPayoutsProvider(t *testing.T, now func() time.Time) *payoutsProvider {
	t.Helper()
	p := &payoutsProvider{reject: map[string]bool{}}
	p.Receiver = httpfake.New(&httpfake.Config{
		Pattern: "POST /v1/transfers",
		Key: func(_ *http.Request, body []byte) string {
			return transferRequestOf(body).ClientTransactionID
		},
		Window:   providerWindow,
		Now:      now,
		IDPrefix: "tr_",
		Respond:  p.create,
		Other:    http.HandlerFunc(p.list),
	})
	t.Cleanup(p.Close) // releases a request still held
	return p
}

func (p *payoutsProvider) url() string { return p.URL() }

func transferRequestOf(body []byte) TransferRequest {
	var req TransferRequest
	_ = json.Unmarshal(body, &req)
	return req
}

// create is the provider's own checks of a transfer request that would
// move money, and the transfer it answers.
func (p *payoutsProvider) create(r *httpfake.Request) (int, []byte) {
	if r.Header.Get("Authorization") != "Bearer "+apiKey {
		return http.StatusUnauthorized, []byte(`{"error":"unauthorized"}`)
	}
	var req TransferRequest
	if err := json.Unmarshal(r.Body, &req); err != nil {
		return http.StatusBadRequest, []byte(`{"error":"invalid JSON"}`)
	}
	if !uuidRE.MatchString(req.ClientTransactionID) {
		return http.StatusBadRequest, []byte(`{"error":"client_transaction_id must be a UUID"}`)
	}
	p.mu.Lock()
	rejected := p.reject[req.Recipient]
	p.mu.Unlock()
	if rejected {
		return http.StatusBadRequest, []byte(`{"error":"unknown recipient"}`)
	}
	b, err := json.Marshal(Transfer{ID: r.EffectID, ClientTransactionID: req.ClientTransactionID, Reference: req.Reference,
		Recipient: req.Recipient, Amount: req.Amount, Currency: req.Currency, Status: "processing"})
	if err != nil {
		return http.StatusInternalServerError, nil
	}
	return http.StatusCreated, b
}

// list serves GET /v1/transfers?reference=<uuid>.
func (p *payoutsProvider) list(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Header.Get("Authorization") != "Bearer "+apiKey:
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	case r.URL.Path != "/v1/transfers" || r.Method != http.MethodGet:
		http.NotFound(w, r)
		return
	}
	p.lists.Add(1)
	ref := r.URL.Query().Get("reference")
	out := []Transfer{}
	for _, t := range p.allTransfers() {
		if t.Reference == ref {
			out = append(out, t)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"data": out})
}

func (p *payoutsProvider) rejectRecipient(r string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reject[r] = true
}

// allTransfers returns the transfers really made, in order.
func (p *payoutsProvider) allTransfers() []Transfer {
	var out []Transfer
	for _, e := range p.AllEffects() {
		var t Transfer
		_ = json.Unmarshal(e.Body, &t) // the answer create gave
		out = append(out, t)
	}
	return out
}

// transfersTo returns the transfers made to recipient.
func (p *payoutsProvider) transfersTo(recipient string) []Transfer {
	var out []Transfer
	for _, t := range p.allTransfers() {
		if t.Recipient == recipient {
			out = append(out, t)
		}
	}
	return out
}

// postsReceived returns the body of every POST received, in order.
func (p *payoutsProvider) postsReceived() []TransferRequest {
	var out []TransferRequest
	for _, r := range p.AllRequests() {
		out = append(out, transferRequestOf(r.Body))
	}
	return out
}
