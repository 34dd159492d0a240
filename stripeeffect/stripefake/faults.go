package stripefake

import (
	"fmt"
	"net/http"
	"path"
	"time"
)

// FaultKind says what an injected [Fault] does to a request.
type FaultKind int

const (
	// FaultNone is the zero value; RequestRecord.Fault is FaultNone when no
	// fault applied.
	FaultNone FaultKind = iota

	// FaultServerErrorBeforeWrite answers with a 5xx (Fault.Status, 500 by
	// default) before the endpoint executes. Nothing is created and nothing is
	// saved under the idempotency key, so a retry with the same key executes.
	// No Stripe-Should-Retry header is sent, so stripe-go retries it only if
	// the status is 503.
	FaultServerErrorBeforeWrite

	// FaultServerErrorAfterWrite lets the endpoint execute (the object is
	// created) and then answers with a 5xx api_error that is saved under the
	// idempotency key: every retry with the same key gets the same 5xx back,
	// with Idempotent-Replayed: true, until the key expires. Stripe-Should-Retry
	// is false. It only matches requests that execute, never replays.
	FaultServerErrorAfterWrite

	// FaultRateLimit answers 429 with code "rate_limit" and a Retry-After
	// header (Fault.RetryAfter, one second by default) before executing.
	// Nothing is saved. stripe-go does not retry it.
	FaultRateLimit

	// FaultLockTimeout answers 429 with code "lock_timeout" and
	// Stripe-Should-Retry: true before executing. Nothing is saved. stripe-go
	// retries it when retries are enabled.
	FaultLockTimeout

	// FaultDelay waits (Fault.Delay of real time, or until Fault.Release is
	// closed) before executing. The idempotency key stays in flight while it
	// waits, so a concurrent request with the same key gets 409
	// idempotency_key_in_use. If the client goes away during the wait, the
	// request is not executed and nothing is saved.
	FaultDelay

	// FaultDelayAfterWrite executes and saves the response, then waits before
	// answering. The key stays in flight until the wait ends, even if the
	// client gave up (timeout) meanwhile, as Stripe would go on: the object
	// exists anyway, a retry with the same key during the wait gets 409 and
	// one after it replays the saved response. With Release set and no Delay,
	// the wait lasts until Release is closed or the server is closed.
	FaultDelayAfterWrite

	// FaultResponseLost executes and saves the response, then sends only a
	// truncated status line and closes the connection: the client gets a
	// network error ("unexpected EOF") even though the object was created. A
	// retry with the same key replays the saved success.
	FaultResponseLost

	// FaultConnectionClosed executes and saves the response, then closes the
	// connection without writing a byte. Beware: on a reused keep-alive
	// connection Go's net/http transport resends a POST that carries an
	// Idempotency-Key by itself (see net/http Request.isReplayable), so the
	// client may transparently receive the replayed response instead of an
	// error. Use FaultResponseLost for a deterministic network error.
	FaultConnectionClosed

	// FaultServerErrorSavedBeforeWrite lets the endpoint start (the
	// parameters are validated and the resources they name looked up), then
	// fails it before it writes anything and answers with a 5xx api_error
	// (Fault.Status, 500 by default) that is saved under the idempotency
	// key: nothing is created, a list shows no object, and every retry with
	// the same key gets the same 5xx back, with Idempotent-Replayed: true,
	// until the key expires. This is Stripe's "began executing, then failed"
	// case, in which only a lookup can tell that nothing happened.
	// Stripe-Should-Retry is false. Like FaultServerErrorAfterWrite it only
	// matches requests that execute, and is handed back when the endpoint
	// rejects the parameters. On a GET (Fault.Method "GET") it answers the
	// 5xx after reading.
	FaultServerErrorSavedBeforeWrite
)

var faultNames = map[FaultKind]string{
	FaultNone:                   "FaultNone",
	FaultServerErrorBeforeWrite: "FaultServerErrorBeforeWrite",
	FaultServerErrorAfterWrite:  "FaultServerErrorAfterWrite",
	FaultRateLimit:              "FaultRateLimit",
	FaultLockTimeout:            "FaultLockTimeout",
	FaultDelay:                  "FaultDelay",
	FaultDelayAfterWrite:        "FaultDelayAfterWrite",
	FaultResponseLost:           "FaultResponseLost",
	FaultConnectionClosed:       "FaultConnectionClosed",

	FaultServerErrorSavedBeforeWrite: "FaultServerErrorSavedBeforeWrite",
}

// String returns the constant's name.
func (k FaultKind) String() string {
	if s, ok := faultNames[k]; ok {
		return s
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

// Fault describes a failure to inject into the next matching requests. See
// [Server.InjectFault].
type Fault struct {
	// Kind is what happens to a matching request.
	Kind FaultKind

	// Method is the HTTP method to match. Empty means POST only, so that GET
	// requests made by test assertions do not consume faults.
	Method string

	// Path is a path.Match pattern for the request path, for example
	// "/v1/promotion_codes", "/v1/promotion_codes/*" or
	// "/v1/customers/*/balance_transactions". Empty matches every path.
	Path string

	// Key, when not empty, matches only requests with this Idempotency-Key.
	Key string

	// Times is how many matching requests the fault applies to: 0 means 1,
	// a negative number means every matching request until ClearFaults.
	Times int

	// Delay is the real-time wait of FaultDelay and FaultDelayAfterWrite.
	Delay time.Duration

	// Release, if not nil, ends the wait of FaultDelay and FaultDelayAfterWrite
	// when it is closed (whichever of Delay and Release comes first). With a
	// zero Delay and a nil Release there is no wait. Closing the server ends
	// every wait.
	Release <-chan struct{}

	// Status is the HTTP status of the server error kinds; 0 means 500.
	Status int

	// RetryAfter is the Retry-After header of FaultRateLimit, rounded up to
	// whole seconds; 0 means one second.
	RetryAfter time.Duration
}

type activeFault struct {
	Fault
	remaining int // < 0: unlimited
}

// InjectFault arms f for the next f.Times matching requests (one if Times is
// 0). Faults are checked in the order they were injected; the first armed
// match applies. A fault is consumed by a request that passes the idempotency
// check, whether it is about to execute or to replay a saved response;
// requests rejected with an idempotency error (400 or 409) never consume a
// fault, and FaultServerErrorAfterWrite and FaultServerErrorSavedBeforeWrite
// are only consumed by a request that actually executes (they are handed
// back when the endpoint rejects the parameters). It panics if f.Kind is
// not a known kind or f.Path is not a valid path.Match pattern.
func (s *Server) InjectFault(f Fault) {
	if _, ok := faultNames[f.Kind]; !ok || f.Kind == FaultNone {
		panic(fmt.Sprintf("stripefake: InjectFault with invalid kind %v", f.Kind))
	}
	if _, err := path.Match(f.Path, ""); err != nil {
		panic(fmt.Sprintf("stripefake: InjectFault with invalid path pattern %q: %v", f.Path, err))
	}
	n := f.Times
	if n == 0 {
		n = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &activeFault{Fault: f, remaining: n})
}

// ClearFaults disarms every injected fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// PendingFaults returns how many injected faults are still armed.
func (s *Server) PendingFaults() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.faults {
		if f.remaining != 0 {
			n++
		}
	}
	return n
}

func (f *activeFault) matches(method, p, key string, replay bool) bool {
	if f.remaining == 0 {
		return false
	}
	if replay && (f.Kind == FaultServerErrorAfterWrite || f.Kind == FaultServerErrorSavedBeforeWrite) {
		return false
	}
	wantMethod := f.Method
	if wantMethod == "" {
		wantMethod = http.MethodPost
	}
	if method != wantMethod {
		return false
	}
	if f.Key != "" && f.Key != key {
		return false
	}
	if f.Path != "" {
		if ok, _ := path.Match(f.Path, p); !ok {
			return false
		}
	}
	return true
}

// takeFault consumes one use of the first armed fault matching the request.
func (s *Server) takeFault(method, p, key string, replay bool) *activeFault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.faults {
		if f.matches(method, p, key, replay) {
			if f.remaining > 0 {
				f.remaining--
			}
			return f
		}
	}
	return nil
}

// giveBack re-arms one use of a fault that did not apply after all.
func (s *Server) giveBack(f *activeFault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.remaining >= 0 {
		f.remaining++
	}
}

// wait blocks for the fault's delay. It returns false if cancel (the client
// going away, or nil to ignore it) or closed (the server shutting down) ended
// the wait first.
func (f *activeFault) wait(cancel, closed <-chan struct{}) bool {
	if f.Delay <= 0 && f.Release == nil {
		return true
	}
	var timeout <-chan time.Time
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-timeout:
		return true
	case <-f.Release:
		return true
	case <-cancel:
		return false
	case <-closed:
		return false
	}
}

func (f *activeFault) status() int {
	if f.Status != 0 {
		return f.Status
	}
	return http.StatusInternalServerError
}

// faultReply builds the response of the kinds that answer instead of executing.
func (f *activeFault) reply() reply {
	switch f.Kind {
	case FaultRateLimit:
		r := invalidRequest(http.StatusTooManyRequests, "rate_limit",
			"Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits.", "")
		secs := int64((f.RetryAfter + time.Second - 1) / time.Second)
		if secs <= 0 {
			secs = 1
		}
		r.header.Set("Retry-After", fmt.Sprint(secs))
		r.header.Del("Stripe-Should-Retry")
		return r
	case FaultLockTimeout:
		r := invalidRequest(http.StatusTooManyRequests, "lock_timeout",
			"This object cannot be accessed right now because another API request or Stripe process is "+
				"currently accessing it. If you see this error intermittently, retry the request.", "")
		r.header.Set("Stripe-Should-Retry", "true")
		return r
	default: // server errors
		r := errorReply(f.status(), "api_error", "", "An unknown error occurred (injected by stripefake).", "")
		if f.Kind == FaultServerErrorAfterWrite || f.Kind == FaultServerErrorSavedBeforeWrite {
			r.header.Set("Stripe-Should-Retry", "false")
		}
		return r
	}
}
