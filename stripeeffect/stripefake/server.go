package stripefake

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
)

// KeyTTL is how long an idempotency key is remembered, measured on the
// server's clock from the first request that used it. Once it has passed,
// the same key executes again.
const KeyTTL = 24 * time.Hour

// DefaultNow is the initial time of a new server's clock. Set it before
// calling New to change the start of servers created afterwards.
var DefaultNow = time.Date(2024, time.January, 1, 0, 0, 0, 0, time.UTC)

// maxBody bounds request bodies.
const maxBody = 1 << 20

// Kind names a kind of Stripe object, as in its "object" field.
type Kind string

// The kinds of objects the fake creates.
const (
	KindPromotionCode              Kind = "promotion_code"
	KindRefund                     Kind = "refund"
	KindCustomerBalanceTransaction Kind = "customer_balance_transaction"
)

// Op names the kind of API operation a request asked for, from its method
// and path: POST to a collection creates, POST to one object updates, GET of
// a collection lists, GET of one object retrieves.
type Op string

// The operations of [RequestRecord.Op].
const (
	OpNone     Op = ""         // a path the fake does not model
	OpCreate   Op = "create"   // POST /v1/refunds, POST /v1/customers/{cus}/balance_transactions
	OpUpdate   Op = "update"   // POST /v1/promotion_codes/{id}
	OpList     Op = "list"     // GET /v1/promotion_codes
	OpRetrieve Op = "retrieve" // GET /v1/refunds/{id}
)

// Object is an object the server created by executing a request.
type Object struct {
	Kind           Kind
	ID             string
	IdempotencyKey string    // key of the request that created it; "" if none
	RequestID      string    // Request-Id of the request that created it
	Created        time.Time // server clock when it was created
}

// RequestRecord describes one finished HTTP request.
type RequestRecord struct {
	Seq            int       // arrival order, from 1
	Time           time.Time // server clock at arrival
	RequestID      string    // the Request-Id header sent back
	Method         string
	Path           string
	Op             Op     // operation asked for, whatever the outcome; OpNone if not modelled
	Kind           Kind   // kind of object addressed; "" if not modelled
	IdempotencyKey string // "" when the request had none
	// Params is the canonical form of the parameters (the body of a POST,
	// the query of a GET): keys sorted, uniformly escaped.
	Params string
	// Status is the HTTP status sent, or 0 if no response was delivered
	// (FaultResponseLost, FaultConnectionClosed, client gone).
	Status int
	// Replayed is true when the response was a saved one, sent again for a
	// repeated idempotency key.
	Replayed bool
	// Executed is true when the endpoint ran (and may have changed state).
	Executed bool
	// Fault is the injected fault that applied, or FaultNone.
	Fault FaultKind
	// ErrorType and ErrorCode are those of the error response, if any.
	ErrorType string
	ErrorCode string
	// ObjectID is the object created, updated or read, if any.
	ObjectID string
}

// Server is an in-process fake of the parts of Stripe's HTTP API listed in
// the package documentation. It is safe for concurrent use. Create it with
// [New] and Close it when done.
type Server struct {
	ts     *httptest.Server
	closed chan struct{}
	once   sync.Once

	mu        sync.Mutex
	now       time.Time
	counters  map[string]int
	idem      map[idemScope]*idemEntry
	faults    []*activeFault
	records   []RequestRecord
	observer  func(RequestRecord)
	seq       int
	inFlight  int
	noKey     int
	autoKey   int
	objects   []Object
	coupons   map[string]*coupon
	promos    []*promotionCode // creation order
	promoByID map[string]*promotionCode
	intents   map[string]*paymentIntent
	refunds   []*refund
	balances  map[string]*customerBalance
	cbtxns    []*balanceTransaction
}

type idemScope struct {
	apiKey, account, key string
}

// idemEntry is what the server remembers about an idempotency key.
type idemEntry struct {
	firstSeen time.Time
	method    string
	path      string
	params    string
	inFlight  bool

	// the saved response, valid once the request executed
	rep       reply
	requestID string
	objectID  string
}

// New starts a fake Stripe server on a local port. Its clock starts at
// [DefaultNow].
func New() *Server {
	s := &Server{
		now:       DefaultNow,
		counters:  map[string]int{},
		idem:      map[idemScope]*idemEntry{},
		coupons:   map[string]*coupon{},
		promoByID: map[string]*promotionCode{},
		intents:   map[string]*paymentIntent{},
		balances:  map[string]*customerBalance{},
		closed:    make(chan struct{}),
	}
	s.ts = httptest.NewServer(s)
	return s
}

// Close shuts the server down and closes the connections of the clients made
// by [Server.Client] and [Server.BackendConfig].
// It ends the waits of delay faults first. Calling it twice is harmless.
func (s *Server) Close() {
	s.once.Do(func() { close(s.closed) })
	s.ts.Close()
}

// URL is the base URL of the server, such as "http://127.0.0.1:12345".
func (s *Server) URL() string { return s.ts.URL }

// BackendConfig returns a stripe-go backend configuration that talks to the
// server: its URL, no client-side retries (MaxNetworkRetries 0), a silent
// logger and an HTTP client owned by the server. Change fields before use, for
// example MaxNetworkRetries, to test the client's own retries.
func (s *Server) BackendConfig() *stripe.BackendConfig {
	return &stripe.BackendConfig{
		URL:               stripe.String(s.ts.URL),
		HTTPClient:        s.ts.Client(),
		MaxNetworkRetries: stripe.Int64(0),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	}
}

// Client returns a real stripe-go client using apiKey (any non-empty string,
// such as "sk_test_x") and [Server.BackendConfig].
func (s *Server) Client(apiKey string) *client.API {
	return client.New(apiKey, stripe.NewBackendsWithConfig(s.BackendConfig()))
}

// Now returns the server's clock, used for key expiry and "created" fields.
func (s *Server) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now
}

// Advance moves the server's clock forward by d. Advancing past [KeyTTL]
// after a key's first use makes the key forgotten.
func (s *Server) Advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = s.now.Add(d)
}

// SetNow sets the server's clock.
func (s *Server) SetNow(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = t
}

// OnRequest registers fn to be called once for every request, with its
// record, when its outcome is known: just before the response is written or
// the connection dropped (or after the client went away during a delay). It replaces any
// earlier function; nil removes it. fn runs on the request's goroutine, outside
// the server's lock, so it may call the server's methods.
func (s *Server) OnRequest(fn func(RequestRecord)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observer = fn
}

// ---- inspection ----

// Created returns how many objects of kind were really created (replays do
// not count).
func (s *Server) Created(kind Kind) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, o := range s.objects {
		if o.Kind == kind {
			n++
		}
	}
	return n
}

// CreatedObjects returns how many objects of all kinds were created.
func (s *Server) CreatedObjects() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.objects)
}

// Objects returns the created objects in creation order.
func (s *Server) Objects() []Object {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.objects)
}

// AllRequests returns the records of all finished requests in arrival order.
func (s *Server) AllRequests() []RequestRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.records)
	slices.SortFunc(out, func(a, b RequestRecord) int { return a.Seq - b.Seq })
	return out
}

// Requests returns the finished requests that carried idempotency key key,
// in arrival order, whatever their API key.
func (s *Server) Requests(key string) []RequestRecord {
	var out []RequestRecord
	for _, r := range s.AllRequests() {
		if r.IdempotencyKey == key {
			out = append(out, r)
		}
	}
	return out
}

// Calls returns how many finished requests asked for op on objects of kind,
// whatever their outcome (rejected, replayed, failed by a fault or
// executed); kind "" counts every kind. Calls(OpCreate, "") counts every
// creating POST and Calls(OpList, KindRefund) every page of a refund list,
// so a test can tell reads from writes: take the counts before and after the
// code under test.
func (s *Server) Calls(op Op, kind Kind) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.records {
		if r.Op == op && (kind == "" || r.Kind == kind) {
			n++
		}
	}
	return n
}

// RequestCount returns how many requests (of any method) have finished.
func (s *Server) RequestCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// RequestsWithoutKey returns how many POST requests arrived without an
// Idempotency-Key header. They are executed, as Stripe does, but they cannot
// be retried safely. stripe-go always sends a key on POST, so see also
// [Server.RequestsWithGeneratedKey].
func (s *Server) RequestsWithoutKey() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.noKey
}

// RequestsWithGeneratedKey returns how many POST requests carried a key in
// the format stripe-go invents when the caller sets none ("<unix
// nanoseconds>_<6 characters>"). Such a key only protects that one call's own
// retries, so a caller that wants exactly-once effects should never send one.
func (s *Server) RequestsWithGeneratedKey() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.autoKey
}

// InFlight returns how many requests holding an idempotency key are executing
// (or held by a delay fault) right now.
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

// ---- request pipeline ----

var generatedKey = regexp.MustCompile(`^[0-9]{10,}_[A-Za-z0-9_-]{6}$`)

// ServeHTTP implements http.Handler, so the fake can also be mounted on a
// server of the caller's choosing.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ep := route(r.Method, r.URL.Path)
	s.mu.Lock()
	s.seq++
	rec := &RequestRecord{
		Seq:            s.seq,
		Time:           s.now,
		RequestID:      s.newIDLocked("req"),
		Method:         r.Method,
		Path:           r.URL.Path,
		Op:             ep.op,
		Kind:           ep.kind,
		IdempotencyKey: strings.TrimSpace(r.Header.Get("Idempotency-Key")),
	}
	s.mu.Unlock()
	c := &call{r: r, key: rec.IdempotencyKey, rec: rec}
	defer s.finish(c) // for requests that end without a response

	h := w.Header()
	h.Set("Request-Id", rec.RequestID)
	if rec.IdempotencyKey != "" {
		h.Set("Idempotency-Key", rec.IdempotencyKey)
	}

	apiKey, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	apiKey = strings.TrimSpace(apiKey)
	if apiKey == "" {
		s.send(w, c, invalidRequest(http.StatusUnauthorized, "",
			"You did not provide an API key. You need to provide your API key in the Authorization header, "+
				"using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').", ""))
		return
	}

	raw := r.URL.RawQuery
	if r.Method != http.MethodGet {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			s.send(w, c, invalidRequest(http.StatusBadRequest, "", "Could not read the request body: "+err.Error(), ""))
			return
		}
		raw = string(body)
	}
	pairs, err := parseForm(raw)
	if err != nil {
		s.send(w, c, invalidRequest(http.StatusBadRequest, "", "Invalid request: "+err.Error(), ""))
		return
	}
	rec.Params = canonicalForm(pairs)

	h2, pathIDs := ep.h, ep.ids
	if h2 == nil {
		s.send(w, c, invalidRequest(http.StatusNotFound, "",
			fmt.Sprintf("Unrecognized request URL (%s: %s).", r.Method, r.URL.Path), ""))
		return
	}
	c.params, c.ids = params(pairs), pathIDs

	if r.Method != http.MethodPost {
		// Only POSTs are idempotency-checked; keys on GET have no effect.
		s.run(w, c, h2, nil, idemScope{})
		return
	}

	s.mu.Lock()
	switch {
	case rec.IdempotencyKey == "":
		s.noKey++
	case generatedKey.MatchString(rec.IdempotencyKey):
		s.autoKey++
	}
	if rec.IdempotencyKey == "" {
		s.mu.Unlock()
		s.run(w, c, h2, nil, idemScope{})
		return
	}

	scope := idemScope{apiKey: apiKey, account: r.Header.Get("Stripe-Account"), key: rec.IdempotencyKey}
	e := s.idem[scope]
	if e != nil && !e.inFlight && !s.now.Before(e.firstSeen.Add(KeyTTL)) {
		delete(s.idem, scope) // expired: forget it
		e = nil
	}
	if e != nil {
		if e.method != r.Method || e.path != r.URL.Path || e.params != rec.Params {
			s.mu.Unlock()
			rep := errorReply(http.StatusBadRequest, "idempotency_error", "", fmt.Sprintf(
				"Keys for idempotent requests can only be used with the same parameters they were first used with. "+
					"Try using a key other than '%s' if you meant to execute a different request.", rec.IdempotencyKey), "")
			rep.header.Set("Stripe-Should-Retry", "false")
			s.send(w, c, rep)
			return
		}
		if e.inFlight {
			s.mu.Unlock()
			rep := errorReply(http.StatusConflict, "idempotency_error", "idempotency_key_in_use", fmt.Sprintf(
				"There is currently another in-progress request using this idempotent key (that probably means "+
					"you submitted twice, and the other request is still going through): '%s'. Please try again later.",
				rec.IdempotencyKey), "")
			rep.header.Set("Stripe-Should-Retry", "true")
			s.send(w, c, rep)
			return
		}
		saved := *e
		s.mu.Unlock()
		s.replay(w, c, &saved)
		return
	}
	e = &idemEntry{
		firstSeen: s.now,
		method:    r.Method,
		path:      r.URL.Path,
		params:    rec.Params,
		inFlight:  true,
	}
	s.idem[scope] = e
	s.inFlight++
	s.mu.Unlock()
	s.run(w, c, h2, e, scope)
}

// replay sends a saved response again.
func (s *Server) replay(w http.ResponseWriter, c *call, e *idemEntry) {
	rec := c.rec
	rec.Replayed = true
	rec.ObjectID = e.objectID
	rep := e.rep.clone()
	rep.header.Set("Idempotent-Replayed", "true")
	rep.header.Set("Original-Request", e.requestID)
	if rep.status >= 500 {
		// The saved 5xx will come back every time: retrying is pointless.
		rep.header.Set("Stripe-Should-Retry", "false")
	}
	f := s.takeFault(c.r.Method, rec.Path, c.key, true)
	if f != nil {
		rec.Fault = f.Kind
		switch f.Kind {
		case FaultRateLimit, FaultLockTimeout, FaultServerErrorBeforeWrite:
			rec.Replayed = false
			s.send(w, c, f.reply())
			return
		case FaultDelay, FaultDelayAfterWrite:
			if !f.wait(c.r.Context().Done(), s.closed) {
				return
			}
		case FaultResponseLost, FaultConnectionClosed:
			s.drop(w, c, f.Kind == FaultResponseLost)
			return
		}
	}
	s.send(w, c, rep)
}

// run executes a request that is not a replay. e is its idempotency entry,
// in flight, or nil when the request has no key (or is a GET).
func (s *Server) run(w http.ResponseWriter, c *call, h handlerFunc, e *idemEntry, scope idemScope) {
	rec := c.rec
	done := func(forget bool) {
		if e == nil {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if !e.inFlight {
			return
		}
		e.inFlight = false
		s.inFlight--
		if forget && s.idem[scope] == e {
			delete(s.idem, scope)
		}
	}
	defer done(true) // on any early return, nothing is saved

	f := s.takeFault(c.r.Method, rec.Path, c.key, false)
	kind := FaultNone
	if f != nil {
		kind = f.Kind
		rec.Fault = kind
	}
	switch kind {
	case FaultRateLimit, FaultLockTimeout, FaultServerErrorBeforeWrite:
		done(true)
		s.send(w, c, f.reply())
		return
	case FaultDelay:
		if !f.wait(c.r.Context().Done(), s.closed) {
			return // client gone before execution: nothing done, nothing saved
		}
	case FaultServerErrorSavedBeforeWrite:
		c.noWrite = true
	}

	s.mu.Lock()
	res := h(s, c)
	s.mu.Unlock()

	if !res.executed {
		// Validation failed before the endpoint started: not saved.
		if kind == FaultServerErrorAfterWrite || kind == FaultDelayAfterWrite ||
			kind == FaultResponseLost || kind == FaultConnectionClosed || kind == FaultServerErrorSavedBeforeWrite {
			s.giveBack(f)
			rec.Fault = FaultNone
		}
		done(true)
		s.send(w, c, res.rep)
		return
	}
	rec.Executed = true
	rec.ObjectID = res.objectID
	rep := res.rep
	if kind == FaultServerErrorAfterWrite || kind == FaultServerErrorSavedBeforeWrite {
		rep = f.reply()
	}
	if e != nil {
		// Stripe names the request whose response is saved under the key
		// in Original-Request, on this response and on every replay.
		rep.header.Set("Original-Request", rec.RequestID)
		s.mu.Lock()
		e.rep = rep.clone()
		e.requestID = rec.RequestID
		e.objectID = res.objectID
		s.mu.Unlock()
	}

	switch kind {
	case FaultDelayAfterWrite:
		// Stripe goes on even if the client has gone: ignore its context.
		ok := f.wait(nil, s.closed)
		done(false)
		if !ok {
			return
		}
	case FaultResponseLost, FaultConnectionClosed:
		done(false)
		s.drop(w, c, kind == FaultResponseLost)
		return
	}
	done(false)
	s.send(w, c, rep)
}

// drop hijacks the connection and closes it, after a truncated status line
// if partial.
func (s *Server) drop(w http.ResponseWriter, c *call, partial bool) {
	s.finish(c)
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("stripefake: the ResponseWriter does not support hijacking")
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	if partial {
		// Enough bytes that net/http will not resend the request by itself.
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\n")
		_ = buf.Flush()
	}
	_ = conn.Close()
}

// send records the request (so that its record is visible before the client
// gets the response) and writes the response.
func (s *Server) send(w http.ResponseWriter, c *call, rep reply) {
	rec := c.rec
	rec.Status = rep.status
	rec.ErrorType = rep.errType
	rec.ErrorCode = rep.errCode
	s.finish(c)
	h := w.Header()
	for k, v := range rep.header {
		h[k] = v
	}
	h.Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	_, _ = w.Write(rep.body)
}

// finish stores the request's record, once, and calls the observer.
func (s *Server) finish(c *call) {
	if c.finished {
		return
	}
	c.finished = true
	s.mu.Lock()
	s.records = append(s.records, *c.rec)
	fn := s.observer
	s.mu.Unlock()
	if fn != nil {
		fn(*c.rec)
	}
}

// newIDLocked returns prefix_NNNNNN from a per-prefix counter.
func (s *Server) newIDLocked(prefix string) string {
	s.counters[prefix]++
	return fmt.Sprintf("%s_%06d", prefix, s.counters[prefix])
}

// ---- replies ----

// reply is a response to send, or saved under an idempotency key.
type reply struct {
	status  int
	body    []byte
	header  http.Header
	errType string
	errCode string
}

func (r reply) clone() reply {
	r.header = r.header.Clone()
	if r.header == nil {
		r.header = http.Header{}
	}
	r.body = slices.Clone(r.body)
	return r
}

func jsonReply(status int, v any) reply {
	body, err := json.Marshal(v)
	if err != nil {
		return errorReply(http.StatusInternalServerError, "api_error", "", "stripefake: "+err.Error(), "")
	}
	return reply{status: status, body: body, header: http.Header{}}
}

type errorBody struct {
	Error struct {
		Type    string `json:"type"`
		Code    string `json:"code,omitempty"`
		Message string `json:"message"`
		Param   string `json:"param,omitempty"`
	} `json:"error"`
}

func errorReply(status int, typ, code, msg, param string) reply {
	var b errorBody
	b.Error.Type, b.Error.Code, b.Error.Message, b.Error.Param = typ, code, msg, param
	body, _ := json.Marshal(b)
	return reply{status: status, body: body, header: http.Header{}, errType: typ, errCode: code}
}

// invalidRequest is an invalid_request_error. 4xx other than 409 and 429 get
// Stripe-Should-Retry: false, as the same request can only fail again.
func invalidRequest(status int, code, msg, param string) reply {
	r := errorReply(status, "invalid_request_error", code, msg, param)
	if status >= 400 && status < 500 && status != http.StatusConflict && status != http.StatusTooManyRequests {
		r.header.Set("Stripe-Should-Retry", "false")
	}
	return r
}
