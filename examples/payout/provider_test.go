package payout

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"
	"time"
)

const apiKey = "test-payouts-key"

// payoutsProvider is a fake payouts API that takes its idempotency key only
// as a UUID in the request body, as transfer APIs do (a "customer
// transaction id"):
//
//   - POST /v1/transfers with a JSON TransferRequest. client_transaction_id
//     must be a UUID (400 otherwise: a key like "payouts.transfer:v1:..."
//     is refused). A new id makes a transfer and answers 201 with it.
//   - The id is remembered for providerWindow (24 hours): a repeat with the
//     same body is answered 200 with the transfer made first (header
//     Idempotent-Replayed: true) and moves no money; a repeat with another
//     body is 422. After the window the id is forgotten and a repeat makes
//     a second transfer: the hazard the ledger must never reach.
//   - A repeat while the first request is still being processed is 409.
//   - Like Stripe, it saves the first answer under an id once it started
//     executing, a 500 included (failNext(save500)): every repeat under
//     that id is answered 500 with Idempotent-Replayed: true.
//   - A refused request (an unknown recipient: 400) is not remembered.
//   - GET /v1/transfers?reference=<uuid> lists the transfers carrying that
//     reference, whatever their client_transaction_id, for ever.
//
// transfers is the ground truth of every test: the money really moved.
type payoutsProvider struct {
	srv *httptest.Server
	now func() time.Time

	mu        sync.Mutex
	transfers []Transfer
	byID      map[string]remembered // by client_transaction_id
	inFlight  map[string]bool
	posts     []TransferRequest // every POST received, in order
	replays   int
	lists     int
	reject    map[string]bool // recipients refused with 400
	faults    []fault         // applied to the next POSTs, in order
	gate      *gate
}

// providerWindow is the fake's documented dedup window.
const providerWindow = 24 * time.Hour

type fault int

const (
	// dropAfterCreate makes the transfer, then drops the connection after
	// the status line: the client never sees the answer.
	dropAfterCreate fault = iota + 1
	// save500 answers 500 and saves it under the id, like Stripe.
	save500
)

type remembered struct {
	transfer int // index in transfers; -1 for a saved failure
	hash     [32]byte
	at       time.Time
}

type gate struct {
	entered, release chan struct{}
	once             sync.Once
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func newPayoutsProvider(t *testing.T, now func() time.Time) *payoutsProvider {
	t.Helper()
	p := &payoutsProvider{now: now, byID: map[string]remembered{}, inFlight: map[string]bool{}, reject: map[string]bool{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.handle))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *payoutsProvider) url() string { return p.srv.URL }

func (p *payoutsProvider) handle(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+apiKey {
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	}
	switch {
	case r.URL.Path == "/v1/transfers" && r.Method == http.MethodPost:
		p.create(w, r)
	case r.URL.Path == "/v1/transfers" && r.Method == http.MethodGet:
		p.list(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (p *payoutsProvider) create(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req TransferRequest
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, `{"error":"invalid JSON"}`, http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.posts = append(p.posts, req)
	if !uuidRE.MatchString(req.ClientTransactionID) {
		p.mu.Unlock()
		http.Error(w, `{"error":"client_transaction_id must be a UUID"}`, http.StatusBadRequest)
		return
	}
	hash := sha256.Sum256(fmt.Appendf(nil, "%s|%s|%d|%s", req.Reference, req.Recipient, req.Amount, req.Currency))
	id := req.ClientTransactionID
	if prev, ok := p.byID[id]; ok && p.now().Sub(prev.at) < providerWindow {
		defer p.mu.Unlock()
		switch {
		case prev.hash != hash:
			http.Error(w, `{"error":"client_transaction_id reused with another transfer"}`, http.StatusUnprocessableEntity)
		case prev.transfer < 0:
			w.Header().Set("Idempotent-Replayed", "true")
			http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		default:
			p.replays++
			w.Header().Set("Idempotent-Replayed", "true")
			writeJSON(w, http.StatusOK, p.transfers[prev.transfer])
		}
		return
	}
	if p.inFlight[id] {
		p.mu.Unlock()
		http.Error(w, `{"error":"a request with this client_transaction_id is in progress"}`, http.StatusConflict)
		return
	}
	if p.reject[req.Recipient] {
		p.mu.Unlock()
		http.Error(w, `{"error":"unknown recipient"}`, http.StatusBadRequest)
		return
	}
	p.inFlight[id] = true
	var f fault
	if len(p.faults) > 0 {
		f, p.faults = p.faults[0], p.faults[1:]
	}
	g := p.gate
	p.gate = nil
	p.mu.Unlock()

	if g != nil {
		close(g.entered)
		<-g.release
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inFlight, id)
	if f == save500 {
		p.byID[id] = remembered{transfer: -1, hash: hash, at: p.now()}
		http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		return
	}
	t := Transfer{ID: fmt.Sprintf("tr_%03d", len(p.transfers)+1), ClientTransactionID: id, Reference: req.Reference,
		Recipient: req.Recipient, Amount: req.Amount, Currency: req.Currency, Status: "processing"}
	p.transfers = append(p.transfers, t)
	p.byID[id] = remembered{transfer: len(p.transfers) - 1, hash: hash, at: p.now()}
	if f == dropAfterCreate {
		drop(w)
		return
	}
	writeJSON(w, http.StatusCreated, t)
}

func (p *payoutsProvider) list(w http.ResponseWriter, r *http.Request) {
	ref := r.URL.Query().Get("reference")
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lists++
	out := []Transfer{}
	for _, t := range p.transfers {
		if t.Reference == ref {
			out = append(out, t)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

// drop hijacks the connection and closes it after a status line, so the
// client knows the request was received but never sees the answer (and
// net/http does not re-send it by itself).
func drop(w http.ResponseWriter) {
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	_, _ = buf.WriteString("HTTP/1.1 201 Created\r\n")
	_ = buf.Flush()
	_ = conn.Close()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (p *payoutsProvider) failNext(f ...fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append(p.faults, f...)
}

// holdNext makes the next POST that reaches execution wait until release
// is called; entered is closed when it has arrived.
func (p *payoutsProvider) holdNext(t *testing.T) (entered <-chan struct{}, release func()) {
	g := &gate{entered: make(chan struct{}), release: make(chan struct{})}
	p.mu.Lock()
	p.gate = g
	p.mu.Unlock()
	release = func() { g.once.Do(func() { close(g.release) }) }
	t.Cleanup(release) // before the server closes
	return g.entered, release
}

func (p *payoutsProvider) rejectRecipient(r string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reject[r] = true
}

// count is the number of transfers really made.
func (p *payoutsProvider) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.transfers)
}

func (p *payoutsProvider) allTransfers() []Transfer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Transfer(nil), p.transfers...)
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

func (p *payoutsProvider) postsReceived() []TransferRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]TransferRequest(nil), p.posts...)
}

func (p *payoutsProvider) stats() (replays, lists int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.replays, p.lists
}

// remembers reports whether the provider would still answer a repeat of
// id with its first answer.
func (p *payoutsProvider) remembers(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	prev, ok := p.byID[id]
	return ok && p.now().Sub(prev.at) < providerWindow
}
