package httpfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/effectonce/effectonce/internal/httptoken"
)

// DefaultHeaderName is the request header that carries the key unless
// Config.HeaderName says otherwise; httpeffect sends the same by default.
const DefaultHeaderName = "Idempotency-Key"

// DefaultIDPrefix starts the id of every effect unless Config.IDPrefix
// says otherwise: eff_001, eff_002, ...
const DefaultIDPrefix = "eff_"

// Config configures a Receiver. The zero value (or nil) is a receiver that
// deduplicates by the Idempotency-Key header for ever, at every path and
// method, and answers 200 {"id":"eff_001"}.
type Config struct {
	// IgnoresKey makes a receiver that does not deduplicate: every request
	// Respond accepts is a new effect, whatever its headers, and nothing is
	// remembered (no replay, 409 or 422). Default false: the receiver
	// deduplicates by the key.
	IgnoresKey bool

	// HeaderName is the request header read by the default Key. Empty
	// means DefaultHeaderName ("Idempotency-Key"). It must be a valid
	// header field name.
	HeaderName string

	// Key finds a request's key, given the request and its body (already
	// read: do not read r.Body). Nil means the value of the HeaderName
	// header. Set it for a receiver that takes the key elsewhere: a UUID in
	// the JSON body, a query parameter. An empty key is "no key" (400,
	// unless IgnoresKey).
	Key func(r *http.Request, body []byte) string

	// Window is how long the receiver remembers a key after the request
	// that acted under it: a repeat within the window is replayed, one
	// after it acts again (a second effect). Measured on Now. Zero means
	// for ever. It must not be negative.
	Window time.Duration

	// Now is the receiver's clock, for Window and Effect.At. Nil means
	// time.Now. Pass the test's fake clock to move past the window.
	Now func() time.Time

	// Respond answers a request that reached acting (see the package
	// documentation for the steps before): a status below 400 performs
	// the effect and is remembered under the key with its body; 400 or
	// more refuses the request, nothing performed or remembered. A zero
	// status means 200, and a nil body with a status below 400 means
	// {"id":"<r.EffectID>"}. r.EffectID is the id the effect gets if
	// Respond accepts. Calls are serialized, without the receiver's lock
	// held: Respond may call the Receiver's methods, and a Respond that
	// blocks holds up every other request that reaches acting. Nil means
	// the zero answer: 200 {"id":"eff_001"}.
	Respond func(r *Request) (status int, body []byte)

	// IDPrefix starts every effect's id, followed by its number from 001:
	// "msg_" gives msg_001. Empty means DefaultIDPrefix ("eff_").
	IDPrefix string

	// RetryAfter is sent, in whole seconds rounded up, as the Retry-After
	// header of scripted 429 and 503 answers (Answer, AnswerNext). Zero
	// means no header.
	RetryAfter time.Duration

	// Pattern is the http.ServeMux pattern of the requests the receiver
	// handles as effects, such as "POST /v1/emails". Requests it does not
	// match go to Other; without Other, ServeMux answers them (404, or
	// 405 for another method) and they are neither requests nor effects
	// here. Empty means every request.
	Pattern string

	// Other serves the requests Pattern does not match: a lookup endpoint
	// for Find, built on Performed or AllEffects. It requires a Pattern.
	// Nil means ServeMux's 404 and 405.
	Other http.Handler
}

// Request is one request the receiver handled, as the tests see it.
type Request struct {
	// Seq is the request's number in arrival order, from 1; the answer's
	// Request-Id header is "req_" and Seq.
	Seq    int
	Method string
	// URL is the request's URL as the server read it (path and query).
	URL    *url.URL
	Header http.Header
	Body   []byte
	// Key is what Config.Key found; "" for none.
	Key string
	// EffectID is the effect this request performed, or whose answer it
	// was given again (a replay); "" otherwise. While Respond runs, it is
	// the id the effect will get if Respond accepts.
	EffectID string
	// Status is the status answered; 0 while the request is being handled.
	Status int
	// Replayed reports an answer given from the receiver's memory, with
	// Idempotent-Replayed: true.
	Replayed bool
	// Lost reports an effect performed whose answer was dropped (LoseNext).
	Lost bool
}

// Effect is one effect the receiver performed.
type Effect struct {
	// ID is Config.IDPrefix and the effect's number: eff_001.
	ID string
	// Key is the key it was performed under.
	Key string
	// At is when it was performed, on Config.Now.
	At time.Time
	// Status and Body are the answer the request that performed it got
	// (or would have got, when it was lost), replayed under Key.
	Status int
	Body   []byte
	// Request is the request that performed it.
	Request Request
}

// Receiver is the fake. Create it with New and Close it when done.
type Receiver struct {
	cfg Config
	srv *httptest.Server

	// acting serializes the last steps of a request (scripted answers,
	// Respond, the effect), so that effect numbers follow effects.
	acting sync.Mutex

	mu       sync.Mutex
	seq      int
	requests []*Request
	effects  []Effect
	memory   map[string]memo
	inFlight map[string]bool
	scripts  map[string][]step
	any      []step
	holds    []*hold // waiting for a request
	taken    []*hold // taken by a request, perhaps still held
	lose     int
}

// memo is what the receiver remembers under a key.
type memo struct {
	body     []byte // the request body, against which repeats are compared
	status   int
	answer   []byte
	effectID string // "" for a failure saved without acting
	at       time.Time
}

type stepKind uint8

const (
	answerBefore stepKind = iota + 1
	failAfterActing
	failAndRemember
)

type step struct {
	kind   stepKind
	status int
}

type hold struct {
	entered, release chan struct{}
	once             sync.Once
}

func (h *hold) open() { h.once.Do(func() { close(h.release) }) }

// New starts a receiver on a loopback address. cfg may be nil. New panics
// on an invalid Config (a negative Window, a HeaderName that is not a
// header field name, Other without Pattern, a Pattern ServeMux refuses): a
// mistake in the test's setup.
func New(cfg *Config) *Receiver {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	switch {
	case c.Window < 0:
		panic("httpfake: negative Window")
	case c.Other != nil && c.Pattern == "":
		panic("httpfake: Other needs a Pattern: without one every request is the receiver's")
	}
	if c.HeaderName == "" {
		c.HeaderName = DefaultHeaderName
	}
	if !httptoken.Valid(c.HeaderName) {
		panic(fmt.Sprintf("httpfake: HeaderName %q is not a valid header field name", c.HeaderName))
	}
	if c.Key == nil {
		name := c.HeaderName
		c.Key = func(r *http.Request, _ []byte) string { return r.Header.Get(name) }
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.IDPrefix == "" {
		c.IDPrefix = DefaultIDPrefix
	}
	if c.Pattern == "" {
		c.Pattern = "/"
	}
	f := &Receiver{cfg: c}
	f.reset()
	mux := http.NewServeMux()
	mux.HandleFunc(c.Pattern, f.handle)
	if c.Other != nil {
		mux.Handle("/", c.Other)
	}
	f.srv = httptest.NewServer(mux)
	return f
}

// URL is the receiver's base URL, http://127.0.0.1:port, without a
// trailing slash.
func (f *Receiver) URL() string { return f.srv.URL }

// Close releases every held request, then shuts the server down, waiting
// for the requests in progress.
func (f *Receiver) Close() {
	f.mu.Lock()
	for _, h := range append(f.holds, f.taken...) {
		h.open()
	}
	f.mu.Unlock()
	f.srv.Close()
}

// Effects is the number of distinct effects performed: the ground truth
// for effecttest.Case.Effects. Never the number of requests.
func (f *Receiver) Effects() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.effects)
}

// Requests is the number of requests received (matching Pattern), every
// answer included: replays, refusals, conflicts, scripted answers.
func (f *Receiver) Requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

// Replays is the number of requests answered from the receiver's memory.
func (f *Receiver) Replays() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if r.Replayed {
			n++
		}
	}
	return n
}

// AllEffects returns the effects performed, in order.
func (f *Receiver) AllEffects() []Effect {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Effect, len(f.effects))
	for i, e := range f.effects {
		out[i] = e.clone()
	}
	return out
}

// AllRequests returns the requests received, in arrival order, a request
// still being handled included (its Status is 0).
func (f *Receiver) AllRequests() []Request {
	return f.requestsWhere(func(*Request) bool { return true })
}

// RequestsFor returns the requests received under key, in arrival order;
// RequestsFor("") those without a key.
func (f *Receiver) RequestsFor(key string) []Request {
	return f.requestsWhere(func(r *Request) bool { return r.Key == key })
}

func (f *Receiver) requestsWhere(keep func(*Request) bool) []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Request
	for _, r := range f.requests {
		if keep(r) {
			out = append(out, r.clone())
		}
	}
	return out
}

// Performed returns the first effect performed under key, as the
// provider's lookup would find it: for as long as the receiver runs,
// whether or not it still remembers the key for deduplication (a repeat
// past the Window, or with IgnoresKey, performs another).
func (f *Receiver) Performed(key string) (Effect, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.effects {
		if e.Key == key {
			return e.clone(), true
		}
	}
	return Effect{}, false
}

// Remembers reports whether a repeat of key now would be answered from
// memory (replayed, or 422 for another body) rather than act: false after
// Window, and always with IgnoresKey.
func (f *Receiver) Remembers(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.recall(key)
	return ok
}

// Answer scripts the answers to the next requests under key that reach
// acting (step 5 in the package documentation), one status each, in
// order: the receiver answers the status before acting, so nothing is
// performed or remembered and the request after them may act. Replays,
// conflicts and requests without a key do not use them. A 429 or 503
// carries Config.RetryAfter.
func (f *Receiver) Answer(key string, statuses ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range statuses {
		f.scripts[key] = append(f.scripts[key], step{answerBefore, s})
	}
}

// AnswerNext is Answer for the next requests that reach acting under any
// key, used after the scripts of their own key.
func (f *Receiver) AnswerNext(statuses ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range statuses {
		f.any = append(f.any, step{answerBefore, s})
	}
}

// FailAfterActing scripts the next request under key that reaches acting
// to perform the effect and answer status (a 500, say), saving that
// answer: every repeat within the Window gets status again, with
// Idempotent-Replayed: true, and the effect is counted once. Only a lookup
// (Performed) tells that it happened. Scripts of one key run in the order
// given. With IgnoresKey nothing is saved.
func (f *Receiver) FailAfterActing(key string, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scripts[key] = append(f.scripts[key], step{failAfterActing, status})
}

// FailAndRemember scripts the next request under key that reaches acting
// to answer status without performing the effect, and to save that
// answer as FailAfterActing does: Stripe's saved 500, which says nothing
// of what happened and is repeated under the key until it is forgotten.
// With IgnoresKey nothing is saved: the request gets status, nothing
// performed.
func (f *Receiver) FailAndRemember(key string, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scripts[key] = append(f.scripts[key], step{failAndRemember, status})
}

// HoldNext makes the next request that gets past the replay and conflict
// checks wait, its key in flight, until release is called; entered is
// closed when it has arrived. Calls add up: two HoldNext hold the next two
// requests. release may be called more than once; Close calls it.
func (f *Receiver) HoldNext() (entered <-chan struct{}, release func()) {
	h := &hold{entered: make(chan struct{}), release: make(chan struct{})}
	f.mu.Lock()
	f.holds = append(f.holds, h)
	f.mu.Unlock()
	return h.entered, h.open
}

// LoseNext makes the next request that performs an effect lose its answer:
// the effect is performed and remembered, then the connection is closed
// after the status line. The client knows its request was written and
// gets no answer (httpeffect classifies that unknown), and net/http does
// not re-send it by itself. Calls add up.
func (f *Receiver) LoseNext() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lose++
}

// Reset forgets the requests, effects, remembered keys, scripts and
// LoseNext, and releases held requests: the receiver is as new, its
// numbers starting again from 1. Call it when no request is in progress.
func (f *Receiver) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range append(f.holds, f.taken...) {
		h.open()
	}
	f.reset()
}

func (f *Receiver) reset() {
	f.seq, f.requests, f.effects, f.lose = 0, nil, nil, 0
	f.memory, f.inFlight, f.scripts = map[string]memo{}, map[string]bool{}, map[string][]step{}
	f.any, f.holds, f.taken = nil, nil, nil
}

// recall returns what the receiver remembers under key, within the
// window. Called with mu held.
func (f *Receiver) recall(key string) (memo, bool) {
	m, ok := f.memory[key]
	if !ok || f.cfg.Window > 0 && f.cfg.Now().Sub(m.at) >= f.cfg.Window {
		return memo{}, false
	}
	return m, true
}

// answer is what a request gets back.
type answer struct {
	status     int
	body       []byte
	replayed   bool
	retryAfter bool
	lost       bool
}

func errorAnswer(status int, reason string) answer {
	b, _ := json.Marshal(map[string]string{"error": reason})
	return answer{status: status, body: b}
}

func (f *Receiver) handle(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // the client went away
	}
	key := f.cfg.Key(r, body)
	u := *r.URL
	f.mu.Lock()
	f.seq++
	req := &Request{Seq: f.seq, Method: r.Method, URL: &u, Header: r.Header.Clone(), Body: body, Key: key}
	f.requests = append(f.requests, req)
	w.Header().Set("Request-Id", "req_"+strconv.Itoa(req.Seq))
	if !f.cfg.IgnoresKey {
		if a, done := f.checkKey(req); done {
			req.Status, req.Replayed = a.status, a.replayed
			f.mu.Unlock()
			write(w, a, 0)
			return
		}
		f.inFlight[key] = true
	}
	var h *hold
	if len(f.holds) > 0 {
		h, f.holds = f.holds[0], f.holds[1:]
		f.taken = append(f.taken, h)
	}
	f.mu.Unlock()

	if h != nil {
		close(h.entered)
		<-h.release
	}
	a := f.act(req)
	if a.lost {
		drop(w, a.status)
		return
	}
	write(w, a, f.cfg.RetryAfter)
}

// checkKey runs steps 1 to 3: no key, a remembered key, a key in flight.
// Called with mu held.
func (f *Receiver) checkKey(req *Request) (answer, bool) {
	if req.Key == "" {
		return errorAnswer(http.StatusBadRequest, f.cfg.HeaderName+" required"), true
	}
	if m, ok := f.recall(req.Key); ok {
		if !bytes.Equal(m.body, req.Body) {
			return errorAnswer(http.StatusUnprocessableEntity, f.cfg.HeaderName+" reused with another request"), true
		}
		req.EffectID = m.effectID
		return answer{status: m.status, body: m.answer, replayed: true}, true
	}
	if f.inFlight[req.Key] {
		return errorAnswer(http.StatusConflict, "a request with this "+f.cfg.HeaderName+" is in progress"), true
	}
	return answer{}, false
}

// act runs steps 5 to 7 for a request that reached acting.
func (f *Receiver) act(req *Request) answer {
	f.acting.Lock()
	defer f.acting.Unlock()

	f.mu.Lock()
	s, scripted := f.nextStep(req.Key)
	id := fmt.Sprintf("%s%03d", f.cfg.IDPrefix, len(f.effects)+1)
	view := req.clone()
	f.mu.Unlock()

	var a answer
	perform, save := false, false
	switch {
	case scripted && s.kind == answerBefore:
		a = errorAnswer(s.status, http.StatusText(s.status))
		a.retryAfter = s.status == http.StatusTooManyRequests || s.status == http.StatusServiceUnavailable
	case scripted:
		a = errorAnswer(s.status, http.StatusText(s.status))
		perform, save = s.kind == failAfterActing, true
	default:
		view.EffectID = id
		a.status, a.body = http.StatusOK, nil
		if f.cfg.Respond != nil {
			a.status, a.body = f.cfg.Respond(&view)
		}
		if a.status == 0 {
			a.status = http.StatusOK
		}
		if a.status < 400 {
			if a.body == nil {
				a.body, _ = json.Marshal(map[string]string{"id": id})
			}
			perform, save = true, true
		}
		a.body = bytes.Clone(a.body)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.cfg.Now()
	req.Status = a.status
	if perform {
		req.EffectID = id
		if f.lose > 0 {
			f.lose--
			req.Lost, a.lost = true, true
		}
		f.effects = append(f.effects, Effect{ID: id, Key: req.Key, At: now, Status: a.status, Body: a.body, Request: req.clone()})
	}
	if !f.cfg.IgnoresKey {
		if save {
			f.memory[req.Key] = memo{body: req.Body, status: a.status, answer: a.body, effectID: req.EffectID, at: now}
		}
		delete(f.inFlight, req.Key)
	}
	return a
}

// nextStep pops the next scripted step for key, then for any key. Called
// with mu held.
func (f *Receiver) nextStep(key string) (step, bool) {
	if s := f.scripts[key]; len(s) > 0 {
		f.scripts[key] = s[1:]
		return s[0], true
	}
	if len(f.any) > 0 {
		s := f.any[0]
		f.any = f.any[1:]
		return s, true
	}
	return step{}, false
}

func write(w http.ResponseWriter, a answer, retryAfter time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if a.replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	if a.retryAfter && retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((retryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
}

// drop writes the status line only and closes the connection: the client
// knows the request arrived but never sees the answer, and net/http's
// transport does not re-send it.
func drop(w http.ResponseWriter, status int) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	_, _ = fmt.Fprintf(buf, "HTTP/1.1 %03d %s\r\n", status, http.StatusText(status))
	_ = buf.Flush()
	_ = conn.Close()
}

func (r *Request) clone() Request {
	c := *r
	if r.URL != nil {
		u := *r.URL
		c.URL = &u
	}
	c.Header = r.Header.Clone()
	c.Body = bytes.Clone(r.Body)
	return c
}

func (e Effect) clone() Effect {
	e.Body = bytes.Clone(e.Body)
	e.Request = e.Request.clone()
	return e
}
