package httpeffect_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
)

// hit is one request as the receiver saw it.
type hit struct {
	Method string
	Header http.Header
	Body   string
}

// receiver is a fake HTTP provider that records every request it gets.
type receiver struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	hits    []hit
	respond func(w http.ResponseWriter, r *http.Request, n int) // n counts from 1
}

func newReceiver(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, n int)) *receiver {
	t.Helper()
	rc := &receiver{t: t, respond: respond}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.hits = append(rc.hits, hit{Method: r.Method, Header: r.Header.Clone(), Body: string(body)})
		n := len(rc.hits)
		rc.mu.Unlock()
		if rc.respond == nil {
			w.WriteHeader(http.StatusCreated)
			return
		}
		rc.respond(w, r, n)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) seen() []hit {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]hit(nil), rc.hits...)
}

func (rc *receiver) post(t *testing.T, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, rc.srv.URL+"/postback", strings.NewReader(body))
	require.NoError(t, err)
	return req
}

var postbackKeys = idempotency.KeySpace{Namespace: "aff.postback"}

func key(id string) idempotency.Key { return postbackKeys.MustKey(idempotency.Str("conversion", id)) }

type conversion struct {
	ID     string
	Amount int64
}

func postbackEffect(rc *receiver, cfg *httpeffect.Config) *idempotency.Effect[conversion, httpeffect.Response] {
	return httpeffect.Effect("aff.postback",
		func(c conversion) (idempotency.Key, error) {
			return postbackKeys.Key(idempotency.Str("conversion", c.ID))
		},
		func(ctx context.Context, c conversion) (*http.Request, error) {
			body := fmt.Sprintf(`{"conversion":%q,"amount":%d}`, c.ID, c.Amount)
			return http.NewRequestWithContext(ctx, http.MethodPost, rc.srv.URL+"/postback", bytes.NewReader([]byte(body)))
		},
		cfg)
}

func newExecutor(t *testing.T) *idempotency.Executor {
	t.Helper()
	x, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), nil)
	require.NoError(t, err)
	return x
}

func TestDoClassifiesStatuses(t *testing.T) {
	t.Parallel()
	type want struct {
		class      idempotency.Class // ClassUnknown here means success
		retryAfter time.Duration
	}
	notActed := want{class: idempotency.ClassNotActed}
	unknown := want{class: idempotency.ClassUnknown}
	permanent := want{class: idempotency.ClassPermanent}
	success := want{class: 255}
	cases := []struct {
		status     int
		retryAfter string
		want       want
	}{
		{200, "", success},
		{201, "", success},
		{202, "", success},
		{204, "", success},
		{302, "", success}, // a redirect answering a write: the receiver handled it
		{303, "", success}, // POST-redirect-GET
		{408, "", notActed},
		{425, "", notActed},
		{429, "", notActed},
		{429, "7", want{idempotency.ClassNotActed, 7 * time.Second}},
		{429, "0", notActed},
		{429, "soon", notActed},
		{503, "120", want{idempotency.ClassNotActed, 2 * time.Minute}},
		{409, "", notActed},
		{409, "2", want{idempotency.ClassNotActed, 2 * time.Second}},
		{500, "", unknown},
		{502, "", unknown},
		{504, "", unknown},
		{504, "3", want{idempotency.ClassUnknown, 3 * time.Second}},
		{422, "", want{class: idempotency.ClassMismatch}},
		{400, "", permanent},
		{401, "", permanent},
		{403, "", permanent},
		{404, "", permanent},
		{410, "", permanent},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d_RetryAfter_%s", tc.status, tc.retryAfter), func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				if tc.status == 302 || tc.status == 303 {
					w.Header().Set("Location", "/postbacks/1")
				}
				w.WriteHeader(tc.status)
				if tc.status != 204 {
					_, _ = fmt.Fprintf(w, `{"status":%d}`, tc.status)
				}
			})
			res, err := httpeffect.Do(context.Background(), key("c1"), rc.post(t, "{}"), nil)
			require.Equal(t, tc.status, res.Status)
			require.Len(t, rc.seen(), 1, "one request per Do; redirects not followed")
			if tc.want == success {
				require.NoError(t, err)
				if tc.status >= 300 {
					require.Equal(t, "/postbacks/1", res.Header.Get("Location"), "the redirect's target is kept")
				}
				return
			}
			require.Error(t, err)
			class, after := idempotency.Classify(err)
			require.Equal(t, tc.want.class, class, err.Error())
			require.Equal(t, tc.want.retryAfter, after)
			var se *httpeffect.StatusError
			require.ErrorAs(t, err, &se)
			require.Equal(t, tc.status, se.Response.Status)
			require.Equal(t, http.MethodPost, se.Method)
			require.NotContains(t, err.Error(), "/postback", "no path in errors")
		})
	}
}

func TestDoHonoursRetryAfterDate(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Retry-After", time.Now().Add(90*time.Second).UTC().Format(http.TimeFormat))
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	_, err := httpeffect.Do(context.Background(), key("c1"), rc.post(t, "{}"), nil)
	class, after := idempotency.Classify(err)
	require.Equal(t, idempotency.ClassNotActed, class)
	// The date has a one-second resolution: allow for it and for the
	// exchange itself, not for a slow machine's sleep.
	require.Greater(t, after, 80*time.Second)
	require.LessOrEqual(t, after, 90*time.Second)
}

func TestDoRequestNeverWrittenIsNotActed(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	req := rc.post(t, "{}")
	rc.srv.Close() // nobody listens any more
	for _, cfg := range []*httpeffect.Config{nil, {ReceiverIgnoresKey: true}} {
		_, err := httpeffect.Do(context.Background(), key("c1"), req, cfg)
		require.Error(t, err)
		class, _ := idempotency.Classify(err)
		require.Equal(t, idempotency.ClassNotActed, class, "a request never written is safe to retry, whatever the receiver")
	}
}

// dropAfterReading answers request n by closing the connection: the
// receiver got the request, the client never gets an answer.
func dropAfterReading(drop int) func(w http.ResponseWriter, r *http.Request, n int) {
	return func(w http.ResponseWriter, r *http.Request, n int) {
		if n != drop {
			w.WriteHeader(http.StatusOK)
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	}
}

func TestDoLostAnswerIsUnknownAndNeverResentByNetHTTP(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		cfg    *httpeffect.Config
		client bool // a keep-alive client of our own
	}{
		{name: "DefaultClient", cfg: &httpeffect.Config{ReceiverIgnoresKey: true}},
		{name: "KeepAliveClientWithBody", cfg: &httpeffect.Config{ReceiverIgnoresKey: true}, client: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, dropAfterReading(2))
			if tc.client {
				tc.cfg.Client = rc.srv.Client()
			}
			// A first request leaves an idle connection for the second.
			_, err := httpeffect.Do(context.Background(), key("c0"), rc.post(t, "{}"), tc.cfg)
			require.NoError(t, err)
			_, err = httpeffect.Do(context.Background(), key("c1"), rc.post(t, `{"amount":5}`), tc.cfg)
			require.Error(t, err)
			class, _ := idempotency.Classify(err)
			require.Equal(t, idempotency.ClassUnknown, class, "the receiver may have acted: %v", err)
			require.Len(t, rc.seen(), 2, "net/http must not re-send the request by itself")
		})
	}
}

// With a receiver that deduplicates, Go's transport may even re-send the
// request itself on a reused connection: harmless, since it carries the
// same key.
func TestDoLostAnswerWhenReceiverDeduplicates(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, dropAfterReading(2))
	cfg := &httpeffect.Config{Client: rc.srv.Client()}
	_, err := httpeffect.Do(context.Background(), key("c0"), rc.post(t, "{}"), cfg)
	require.NoError(t, err)
	_, err = httpeffect.Do(context.Background(), key("c1"), rc.post(t, "{}"), cfg)
	if err != nil {
		class, _ := idempotency.Classify(err)
		require.Equal(t, idempotency.ClassUnknown, class)
	}
	hits := rc.seen()
	for _, h := range hits[1:] {
		require.Equal(t, key("c1").String(), h.Header.Get("Idempotency-Key"))
	}
}

func TestEffectSendsKeyOnEveryAttempt(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":"pb_1"}`)
	})
	eff := postbackEffect(rc, nil)
	eff.Retry = &idempotency.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}
	res, err := idempotency.Run(context.Background(), newExecutor(t), eff, conversion{ID: "cv_9", Amount: 1200})
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, 3, res.Calls)
	require.Equal(t, http.StatusCreated, res.Value.Status)
	require.JSONEq(t, `{"id":"pb_1"}`, string(res.Value.Body))

	hits := rc.seen()
	require.Len(t, hits, 3)
	for i, h := range hits {
		require.Equal(t, []string{key("cv_9").String()}, h.Header.Values("Idempotency-Key"), "attempt %d", i+1)
		require.Equal(t, `{"conversion":"cv_9","amount":1200}`, h.Body, "attempt %d: the body is rebuilt, not drained", i+1)
	}
}

func TestEffectCustomHeaderName(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	eff := postbackEffect(rc, &httpeffect.Config{HeaderName: "x-postback-key"})
	_, err := idempotency.Run(context.Background(), newExecutor(t), eff, conversion{ID: "cv_1", Amount: 1})
	require.NoError(t, err)
	hits := rc.seen()
	require.Len(t, hits, 1)
	require.Equal(t, key("cv_1").String(), hits[0].Header.Get("X-Postback-Key"))
	require.Empty(t, hits[0].Header.Values("Idempotency-Key"))
}

func TestZeroKeyIsNeverSent(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)

	_, err := httpeffect.Do(context.Background(), idempotency.Key{}, rc.post(t, "{}"), nil)
	require.ErrorIs(t, err, httpeffect.ErrNoKey)
	require.ErrorIs(t, err, idempotency.ErrPermanent)

	eff := httpeffect.Effect("aff.postback",
		func(conversion) (idempotency.Key, error) { return idempotency.Key{}, nil },
		func(ctx context.Context, c conversion) (*http.Request, error) {
			return http.NewRequestWithContext(ctx, http.MethodPost, rc.srv.URL, nil)
		}, nil)
	_, err = idempotency.Run(context.Background(), newExecutor(t), eff, conversion{ID: "cv_1"})
	require.Error(t, err)
	// The Call itself refuses a zero key too, should anyone call it directly.
	_, err = eff.Call(context.Background(), idempotency.Key{}, conversion{ID: "cv_1"})
	require.ErrorIs(t, err, httpeffect.ErrNoKey)

	require.Empty(t, rc.seen(), "the receiver saw no request")
}

func TestReceiverIgnoringKeyIsProtectedByTheClaim(t *testing.T) {
	t.Parallel()
	// This receiver knows nothing of keys: every request it gets is an effect.
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, n int) {
		time.Sleep(5 * time.Millisecond) // keep the first delivery in flight a while
		w.WriteHeader(http.StatusOK)
	})
	eff := postbackEffect(rc, &httpeffect.Config{ReceiverIgnoresKey: true})
	x := newExecutor(t)
	var wg sync.WaitGroup
	outcomes := make(chan idempotency.Outcome, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := idempotency.Run(context.Background(), x, eff, conversion{ID: "cv_7", Amount: 300})
			if err != nil {
				t.Errorf("run: %v", err)
			}
			outcomes <- res.Outcome
		}()
	}
	wg.Wait()
	close(outcomes)
	counts := map[idempotency.Outcome]int{}
	for o := range outcomes {
		counts[o]++
	}
	require.Len(t, rc.seen(), 1, "20 concurrent deliveries, one postback")
	require.Equal(t, 1, counts[idempotency.OutcomeApplied])
	require.Equal(t, 19, counts[idempotency.OutcomeInFlight]+counts[idempotency.OutcomeAlreadyApplied])
}

func TestResponseIsBoundedAndKeepsOnlyChosenHeaders(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", httpeffect.DefaultMaxBody+1000)
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Location", "/postbacks/1")
		w.Header().Set("Set-Cookie", "session=secret")
		_, _ = io.WriteString(w, big)
	})
	res, err := httpeffect.Do(context.Background(), key("c1"), rc.post(t, "{}"), nil)
	require.NoError(t, err)
	require.Len(t, res.Body, httpeffect.DefaultMaxBody)
	require.True(t, res.Truncated)
	require.Equal(t, http.Header{"Content-Type": {"text/plain"}, "Location": {"/postbacks/1"}}, res.Header)

	res, err = httpeffect.Do(context.Background(), key("c1"), rc.post(t, "{}"), &httpeffect.Config{MaxBody: 10, KeepHeaders: []string{"location"}})
	require.NoError(t, err)
	require.Equal(t, "xxxxxxxxxx", string(res.Body))
	require.Equal(t, http.Header{"Location": {"/postbacks/1"}}, res.Header)

	// The result round-trips through the ledger's default codec.
	codec := idempotency.JSONCodec[httpeffect.Response]{}
	enc, err := codec.Encode(res)
	require.NoError(t, err)
	dec, err := codec.Decode(enc)
	require.NoError(t, err)
	require.Equal(t, res, dec)
}

func TestDoDoesNotModifyTheRequest(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	req := rc.post(t, "{}")
	req.Header.Set("Idempotency-Key", "a-stale-value")
	_, err := httpeffect.Do(context.Background(), key("c1"), req, nil)
	require.NoError(t, err)
	require.Equal(t, "a-stale-value", req.Header.Get("Idempotency-Key"))
	require.Equal(t, []string{key("c1").String()}, rc.seen()[0].Header.Values("Idempotency-Key"), "the key replaces any value set by the caller")
}

func TestEffectBuildErrors(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	buildErr := errors.New("no such conversion")
	for _, tc := range []struct {
		err   error
		class idempotency.Class
	}{
		{buildErr, idempotency.ClassPermanent},
		{idempotency.NotActed(buildErr, time.Second), idempotency.ClassNotActed},
	} {
		eff := httpeffect.Effect("aff.postback",
			func(c conversion) (idempotency.Key, error) { return key(c.ID), nil },
			func(context.Context, conversion) (*http.Request, error) { return nil, tc.err },
			nil)
		_, err := eff.Call(context.Background(), key("c1"), conversion{ID: "c1"})
		require.ErrorIs(t, err, buildErr)
		class, _ := idempotency.Classify(err)
		require.Equal(t, tc.class, class)
	}
	require.Empty(t, rc.seen())
}

func TestInvalidConfigIsRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	for _, cfg := range []*httpeffect.Config{{HeaderName: "Bad Header"}, {HeaderName: "Key:"}, {MaxBody: -1}, {DedupWindow: -time.Second}} {
		_, err := httpeffect.Do(context.Background(), key("c1"), rc.post(t, "{}"), cfg)
		require.ErrorIs(t, err, httpeffect.ErrInvalidConfig)
		require.Panics(t, func() { postbackEffect(rc, cfg) })
	}
	require.Panics(t, func() {
		httpeffect.Effect[conversion]("x", func(conversion) (idempotency.Key, error) { return key("c"), nil }, nil, nil)
	})
	require.Empty(t, rc.seen())
}

func TestDoReplayedServerErrorIsReconcile(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Idempotent-Replayed", "true")
		w.Header().Set("X-Request-Id", "req_42")
		w.WriteHeader(http.StatusInternalServerError)
	})
	_, err := httpeffect.Do(context.Background(), key("c1"), rc.post(t, "{}"), nil)
	class, _ := idempotency.Classify(err)
	require.Equal(t, idempotency.ClassReconcile, class, "the receiver replays a saved failure: asking again cannot tell")
}

// TestEffectDefaultsMatchTheReceiver: the safety settings follow
// ReceiverIgnoresKey, as documented on Effect.
func TestEffectDefaultsMatchTheReceiver(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	dedup := postbackEffect(rc, nil)
	require.Equal(t, idempotency.ExpiredRetry, dedup.Expired)
	require.Equal(t, httpeffect.DefaultDedupWindow, dedup.DedupWindow)
	require.Equal(t, httpeffect.DefaultRetry, *dedup.Retry)
	require.NotNil(t, dedup.Fingerprint)
	require.Equal(t, 2*time.Hour, postbackEffect(rc, &httpeffect.Config{DedupWindow: 2 * time.Hour}).DedupWindow)

	ignores := postbackEffect(rc, &httpeffect.Config{ReceiverIgnoresKey: true})
	require.Equal(t, idempotency.ExpiredRetryUncalled, ignores.Expired)
	require.Zero(t, ignores.DedupWindow)
	require.Equal(t, httpeffect.DefaultRetry, *ignores.Retry)

	// The fingerprint covers what is sent: the same conversion with another
	// amount is refused before anything is sent.
	x := newExecutor(t)
	_, err := idempotency.Run(context.Background(), x, dedup, conversion{ID: "cv_1", Amount: 100})
	require.NoError(t, err)
	res, err := idempotency.Run(context.Background(), x, dedup, conversion{ID: "cv_1", Amount: 999})
	require.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)
	require.Equal(t, idempotency.OutcomeMismatch, res.Outcome)
	require.Len(t, rc.seen(), 1)
	a, _, err := dedup.Identity(conversion{ID: "cv_1", Amount: 100})
	require.NoError(t, err)
	require.Equal(t, key("cv_1"), a)
}

// TestRedirectAnsweringAWriteIsDone: a receiver that acts and answers 303
// See Other has handled the postback; the key stays blocked, and the next
// tick posts nothing, even for a receiver that ignores keys.
func TestRedirectAnsweringAWriteIsDone(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Location", "/postbacks/77")
		w.WriteHeader(http.StatusSeeOther)
	})
	eff := postbackEffect(rc, &httpeffect.Config{ReceiverIgnoresKey: true})
	x := newExecutor(t)
	res, err := idempotency.Run(context.Background(), x, eff, conversion{ID: "cv_3", Amount: 10})
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Equal(t, http.StatusSeeOther, res.Value.Status)
	require.Equal(t, "/postbacks/77", res.Value.Header.Get("Location"))
	res, err = idempotency.Run(context.Background(), x, eff, conversion{ID: "cv_3", Amount: 10})
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeAlreadyApplied, res.Outcome)
	require.Len(t, rc.seen(), 1, "one postback")
}

// TestUnknownAnswerFromAReceiverThatIgnoresKeysIsNeverRepeated: a 500 may
// have been acted on; without Find the record waits for an operator, with
// Find the next run asks and settles it. One postback in all.
func TestUnknownAnswerFromAReceiverThatIgnoresKeysIsNeverRepeated(t *testing.T) {
	t.Parallel()
	acted := map[string]bool{}
	var mu sync.Mutex
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, n int) {
		mu.Lock()
		acted[r.Header.Get("Idempotency-Key")] = true
		mu.Unlock()
		w.Header().Set("Request-Id", fmt.Sprintf("req_%d", n))
		w.WriteHeader(http.StatusBadGateway) // acted, then the gateway failed
	})
	eff := postbackEffect(rc, &httpeffect.Config{ReceiverIgnoresKey: true})
	x := newExecutor(t)
	res, err := idempotency.Run(context.Background(), x, eff, conversion{ID: "cv_5", Amount: 10})
	require.ErrorIs(t, err, idempotency.ErrNeedsReconciliation)
	require.Equal(t, 1, res.Calls, "an unknown answer is not retried in-run, whatever MaxAttempts")
	require.Equal(t, idempotency.StateInDoubt, res.Record.State)
	require.Len(t, res.Record.Evidence, 1)
	require.Equal(t, idempotency.Attempt{Generation: 1, Class: idempotency.AttemptUnknown, Status: 502, RequestID: "req_1"},
		idempotency.Attempt{Generation: res.Record.Evidence[0].Generation, Class: res.Record.Evidence[0].Class,
			Status: res.Record.Evidence[0].Status, RequestID: res.Record.Evidence[0].RequestID})
	res, _ = idempotency.Run(context.Background(), x, eff, conversion{ID: "cv_5", Amount: 10})
	require.Equal(t, idempotency.OutcomeNeedsReconciliation, res.Outcome)

	// The receiver can be asked (its API lists postbacks by conversion).
	eff.Find = func(ctx context.Context, k idempotency.Key, c conversion) (httpeffect.Response, bool, error) {
		mu.Lock()
		defer mu.Unlock()
		if acted[k.String()] {
			return httpeffect.Response{Status: http.StatusOK, Body: []byte(`{"found":true}`)}, true, nil
		}
		return httpeffect.Response{}, false, nil
	}
	res, err = idempotency.Run(context.Background(), x, eff, conversion{ID: "cv_5", Amount: 10})
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeReconciled, res.Outcome)
	require.Len(t, rc.seen(), 1, "one postback in all")
}
