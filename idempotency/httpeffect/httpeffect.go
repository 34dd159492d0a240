package httpeffect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/internal/httptoken"
)

// DefaultHeaderName is the request header that carries the key unless
// Config.HeaderName says otherwise, as in the IETF HTTPAPI draft "The
// Idempotency-Key HTTP Header Field".
const DefaultHeaderName = "Idempotency-Key"

// DefaultMaxBody is how many bytes of a response body are kept unless
// Config.MaxBody says otherwise.
const DefaultMaxBody = 64 << 10

// DefaultTimeout is the timeout of the client used when Config.Client is
// nil, for the whole exchange (connection, request, response body).
const DefaultTimeout = 10 * time.Second

var (
	// ErrNoKey is returned, classified permanent, for a request without a
	// key. Nothing was sent.
	ErrNoKey = errors.New("httpeffect: no idempotency key; request not sent")
	// ErrInvalidConfig is returned, classified permanent, by Do for a
	// Config it cannot use. Nothing was sent.
	ErrInvalidConfig = errors.New("httpeffect: invalid config")
)

// defaultClient does not follow redirects: a redirected POST becomes a GET
// elsewhere, and the effect may or may not have happened at the first URL.
var defaultClient = &http.Client{
	Timeout:       DefaultTimeout,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// oneShotClient is the default client for receivers that ignore the key:
// it never reuses a connection, because net/http's transport re-sends a
// request carrying an Idempotency-Key header when a reused connection drops
// before the answer, and such a receiver may have acted on the first one.
var oneShotClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableKeepAlives = true
	return &http.Client{Timeout: DefaultTimeout, CheckRedirect: defaultClient.CheckRedirect, Transport: t}
}()

// Config configures the adapter. The zero value (or nil) is ready to use.
type Config struct {
	// Client sends the requests. Nil means a client with a DefaultTimeout
	// (10s) timeout that does not follow redirects (a 3xx answering the
	// write is its answer); with ReceiverIgnoresKey, one that also opens a
	// connection per request. Keep the effect's lease well above the
	// timeout times the in-run attempts.
	Client *http.Client

	// HeaderName is the request header that carries the key. Empty means
	// DefaultHeaderName ("Idempotency-Key"). It must be a valid header
	// field name.
	HeaderName string

	// MaxBody is how many bytes of the response body are kept in Response
	// (and so in the ledger). Zero means DefaultMaxBody (64 KiB).
	MaxBody int64

	// KeepHeaders names the response headers kept in Response.Header.
	// Nil means Content-Type and Location. Other headers are dropped so
	// that cookies and tokens never reach the ledger.
	KeepHeaders []string

	// ReceiverIgnoresKey says the receiver does not deduplicate by the
	// key. Effect then gives the effect idempotency.ExpiredRetryUncalled:
	// an answer that leaves the effect's fate unknown (the connection lost
	// after the request was written, a 5xx) is never retried, in-run or
	// later; the record is in doubt until a Find (set the effect's Find)
	// or an operator settles it. Refusals that say nothing happened (408,
	// 409, 425, 429, 503, a request never written) are retried.
	//
	// It also keeps net/http from re-sending a request by itself: Go's
	// transport replays a request carrying an Idempotency-Key header when
	// a reused connection drops before the answer. The default client then
	// never reuses connections, and a request with a body is sent without
	// GetBody. A Client of your own should disable keep-alives too, or the
	// transport may still replay a request without a body.
	ReceiverIgnoresKey bool

	// DedupWindow is how long a receiver that deduplicates by the key
	// remembers it: Effect sets it as the effect's DedupWindow. Zero
	// means DefaultDedupWindow (24 hours, Stripe's). Ignored with
	// ReceiverIgnoresKey.
	DedupWindow time.Duration

	// RequestIDHeader names the response header holding the receiver's id
	// of the request, kept in each attempt's evidence. Empty means
	// "Request-Id", then "X-Request-Id".
	RequestIDHeader string
}

// DefaultDedupWindow is the receiver's memory of a key when
// Config.DedupWindow is zero.
const DefaultDedupWindow = 24 * time.Hour

// DefaultRetry is the retry policy Effect sets: three attempts per run, 0.5 s
// then 1 s apart (a Retry-After up to 5 s wins), all under the same key; an
// attempt that may have acted is retried only where the receiver
// deduplicates by the key. After a run that gave up, the key waits 2 s,
// doubling with each claim up to an hour (or the receiver's longer
// Retry-After), before another run may try.
var DefaultRetry = idempotency.RetryPolicy{
	MaxAttempts:    3,
	InitialBackoff: 500 * time.Millisecond,
	MaxBackoff:     5 * time.Second,
	RunBackoff:     2 * time.Second,
	MaxRunBackoff:  time.Hour,
}

// resolved is a validated Config with its defaults filled in.
type resolved struct {
	client     *http.Client
	header     string
	maxBody    int64
	keep       []string
	ignoresKey bool
	window     time.Duration
	requestID  []string
}

func (c *Config) resolve() (*resolved, error) {
	var cfg Config
	if c != nil {
		cfg = *c
	}
	r := &resolved{client: cfg.Client, header: cfg.HeaderName, maxBody: cfg.MaxBody, ignoresKey: cfg.ReceiverIgnoresKey,
		window: cfg.DedupWindow, requestID: []string{"Request-Id", "X-Request-Id"}}
	if cfg.RequestIDHeader != "" {
		r.requestID = []string{cfg.RequestIDHeader}
	}
	switch {
	case r.window < 0:
		return nil, fmt.Errorf("%w: negative DedupWindow", ErrInvalidConfig)
	case r.window == 0:
		r.window = DefaultDedupWindow
	}
	if r.client == nil {
		r.client = defaultClient
		if r.ignoresKey {
			r.client = oneShotClient
		}
	}
	if r.header == "" {
		r.header = DefaultHeaderName
	}
	if !httptoken.Valid(r.header) {
		return nil, fmt.Errorf("%w: HeaderName %q is not a valid header field name", ErrInvalidConfig, r.header)
	}
	r.header = http.CanonicalHeaderKey(r.header)
	if r.maxBody < 0 {
		return nil, fmt.Errorf("%w: negative MaxBody", ErrInvalidConfig)
	}
	if r.maxBody == 0 {
		r.maxBody = DefaultMaxBody
	}
	if cfg.KeepHeaders == nil {
		r.keep = []string{"Content-Type", "Location"}
	} else {
		for _, h := range cfg.KeepHeaders {
			r.keep = append(r.keep, http.CanonicalHeaderKey(h))
		}
	}
	return r, nil
}

// Response is what the receiver answered to a successful request. It is
// the effect's result, stored in the ledger (JSON-encoded by default) and
// replayed to later deliveries of the same intent.
type Response struct {
	// Status is the HTTP status code.
	Status int `json:"status"`
	// Header holds the response headers named in Config.KeepHeaders.
	Header http.Header `json:"header,omitempty"`
	// Body is the start of the response body, at most Config.MaxBody bytes.
	Body []byte `json:"body,omitempty"`
	// Truncated reports that Body is not the whole body (longer than
	// MaxBody, or cut short after a 2xx status was received).
	Truncated bool `json:"truncated,omitempty"`
}

// StatusError is the cause of a non-2xx answer. Do returns it wrapped in
// the idempotency class of its status; match it with errors.As.
type StatusError struct {
	Method string
	Host   string // the request's host; the path and query are left out
	// Response is the answer, with the same bounds as a success.
	Response Response
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("httpeffect: %s %s: %d %s", e.Method, e.Host, e.Response.Status, http.StatusText(e.Response.Status))
	if len(e.Response.Body) > 0 {
		body := e.Response.Body
		if len(body) > 200 {
			body = body[:200]
		}
		msg += ": " + strconv.Quote(string(body))
	}
	return msg
}

// Effect returns an effect that performs one HTTP request per call, built
// by build and sent by Do with the key in the configured header. Its safety
// settings are chosen from cfg, at the level of package stripeeffect's:
//
//	setting       receiver deduplicates by the key        Config.ReceiverIgnoresKey
//	Expired       idempotency.ExpiredRetry                idempotency.ExpiredRetryUncalled
//	DedupWindow   Config.DedupWindow (default 24 h)       none
//	Fingerprint   method, URL and body of the request     the same
//	Retry         DefaultRetry (3 attempts)               DefaultRetry (only what provably did not act)
//	after a crash retried under the same key              taken over if its request never started, else in doubt
//
// Replace any of them on the returned effect before its first run, and set
// OnComplete, Lease or Find (a way to ask the receiver whether the effect
// exists, which settles records in doubt).
//
// build is called for every attempt, in-run retries included, and once per
// run for the fingerprint, so a request body is never a reader already
// drained: build a fresh request each time, from in only (a body that
// carries the time would change the fingerprint on every delivery: then
// set Fingerprint yourself). Its errors are returned as they are when
// classified (idempotency.NotActed, ...) and as permanent otherwise;
// nothing is sent.
//
// Effect panics if build is nil or cfg is invalid (a HeaderName that is not
// a header field name, a negative MaxBody or DedupWindow): a configuration
// mistake found when the program starts, not at the first delivery.
func Effect[In any](name string, key func(In) (idempotency.Key, error), build func(ctx context.Context, in In) (*http.Request, error), cfg *Config) *idempotency.Effect[In, Response] {
	if build == nil {
		panic("httpeffect: Effect " + name + ": nil build function")
	}
	r, err := cfg.resolve()
	if err != nil {
		panic(fmt.Sprintf("httpeffect: Effect %s: %v", name, err))
	}
	retry := DefaultRetry
	e := &idempotency.Effect[In, Response]{
		Name: name,
		Key:  key,
		Fingerprint: func(in In) ([]byte, error) {
			req, err := build(context.Background(), in)
			if err != nil {
				return nil, fmt.Errorf("build request: %w", err)
			}
			return requestFingerprint(req)
		},
		Call: func(ctx context.Context, k idempotency.Key, in In) (Response, error) {
			if k.IsZero() {
				return Response{}, idempotency.Permanent(ErrNoKey)
			}
			req, err := build(ctx, in)
			if err != nil {
				if c, _ := idempotency.Classify(err); c != idempotency.ClassUnknown {
					return Response{}, err
				}
				return Response{}, idempotency.Permanent(fmt.Errorf("httpeffect: %s: build request: %w", name, err))
			}
			return r.do(ctx, k, req)
		},
		Expired: idempotency.ExpiredRetry,
		Retry:   &retry,
	}
	if r.ignoresKey {
		e.Expired = idempotency.ExpiredRetryUncalled
	} else {
		e.DedupWindow = r.window
	}
	return e
}

// requestFingerprint is what identifies the payload of a request: its
// method, URL and body.
func requestFingerprint(req *http.Request) ([]byte, error) {
	if req == nil || req.URL == nil {
		return nil, errors.New("nil request or URL")
	}
	var b bytes.Buffer
	b.WriteString(req.Method)
	b.WriteByte('\n')
	b.WriteString(req.URL.String())
	b.WriteByte('\n')
	if req.Body != nil && req.Body != http.NoBody {
		defer req.Body.Close()
		if _, err := io.Copy(&b, req.Body); err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
	}
	return b.Bytes(), nil
}

// Do sends req with key in the configured header (replacing any value req
// had) and classifies the answer by what it proves the receiver did:
//
//	answer                                          class                      why
//	2xx                                             success
//	3xx                                             success                    a redirect answering a write says the receiver handled it (POST-redirect-GET); Response keeps Location
//	408, 425, 429, 503; 409                         idempotency.NotActed       refused before acting (409: the IETF draft's "a request with this key is in flight"); Retry-After honoured
//	422                                             idempotency.Mismatch       the IETF draft's "key reused with another payload"
//	other 4xx                                       idempotency.Permanent      refused; the same request cannot succeed
//	5xx replayed (Idempotent-Replayed: true)        idempotency.Reconcile      the receiver saved a failure and will repeat it under this key
//	other 5xx                                       idempotency.Unknown        it may have acted; Retry-After honoured
//	network error before the request was written    idempotency.NotActed       nothing reached the receiver
//	network error after it was written              idempotency.Unknown        the answer was lost; it may have acted
//
// What the effect's executor then does with an unknown outcome depends on
// its policy (Effect sets it from Config.ReceiverIgnoresKey). Failures wrap a
// *StatusError for an answer, or the client's error. The status, the
// receiver's request id and whether the answer was a replay are reported to
// the executor's evidence (idempotency.Observe). A zero key is ErrNoKey:
// nothing is sent. Do does not modify req; it sends a clone bound to ctx.
// cfg may be nil.
func Do(ctx context.Context, key idempotency.Key, req *http.Request, cfg *Config) (Response, error) {
	r, err := cfg.resolve()
	if err != nil {
		return Response{}, idempotency.Permanent(err)
	}
	return r.do(ctx, key, req)
}

func (r *resolved) do(ctx context.Context, key idempotency.Key, req *http.Request) (Response, error) {
	if key.IsZero() {
		return Response{}, idempotency.Permanent(ErrNoKey)
	}
	if req == nil || req.URL == nil {
		return Response{}, idempotency.Permanent(errors.New("httpeffect: nil request or URL"))
	}
	// Learn whether the request was written in full: an error after that
	// leaves the effect's fate unknown.
	var written atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				written.Store(true)
			}
		},
	})
	out := req.Clone(ctx)
	out.Header.Set(r.header, key.String())
	if r.ignoresKey && out.Body != nil && out.Body != http.NoBody {
		out.GetBody = nil // not replayable by the transport
	}

	resp, err := r.client.Do(out)
	if err != nil {
		err = fmt.Errorf("httpeffect: %s %s: %w", req.Method, req.URL.Host, err)
		if written.Load() {
			return Response{}, idempotency.Unknown(err, 0)
		}
		return Response{}, idempotency.NotActed(err, 0)
	}
	res, bodyErr := r.read(resp)
	replayed := strings.EqualFold(strings.TrimSpace(resp.Header.Get("Idempotent-Replayed")), "true")
	idempotency.Observe(ctx, idempotency.Observation{Status: res.Status, RequestID: r.requestIDOf(resp.Header), Replayed: replayed})
	if 200 <= res.Status && res.Status < 400 {
		// The receiver said it acted (a 3xx to a write included); a body
		// cut short does not undo that.
		if bodyErr != nil {
			res.Truncated = true
		}
		return res, nil
	}
	serr := &StatusError{Method: req.Method, Host: req.URL.Host, Response: res}
	after := retryAfter(resp.Header.Get("Retry-After"), time.Now())
	switch s := res.Status; {
	case s == http.StatusRequestTimeout, s == http.StatusTooEarly, s == http.StatusTooManyRequests,
		s == http.StatusServiceUnavailable, s == http.StatusConflict:
		return res, idempotency.NotActed(serr, after)
	case s == http.StatusUnprocessableEntity:
		return res, idempotency.Mismatch(serr)
	case s >= 500 && replayed:
		return res, idempotency.Reconcile(serr)
	case s >= 500:
		return res, idempotency.Unknown(serr, after)
	default:
		return res, idempotency.Permanent(serr)
	}
}

func (r *resolved) requestIDOf(h http.Header) string {
	for _, name := range r.requestID {
		if v := h.Get(name); v != "" {
			return v
		}
	}
	return ""
}

// read keeps the status, the kept headers and at most maxBody bytes of the
// body, then closes it.
func (r *resolved) read(resp *http.Response) (Response, error) {
	defer resp.Body.Close()
	res := Response{Status: resp.StatusCode}
	for _, h := range r.keep {
		if v := resp.Header.Values(h); len(v) > 0 {
			if res.Header == nil {
				res.Header = http.Header{}
			}
			res.Header[h] = append([]string(nil), v...)
		}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, r.maxBody+1))
	if int64(len(body)) > r.maxBody {
		body, res.Truncated = body[:r.maxBody], true
		// Drain a little so the connection can be reused; give up on more.
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	}
	if len(body) > 0 {
		res.Body = body
	}
	return res, err
}

// retryAfter parses a Retry-After value: delay-seconds or an HTTP date
// (RFC 9110, 10.2.3). Invalid or past values mean no delay.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(1<<62)/int64(time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
