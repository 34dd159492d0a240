package httpfake_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
)

// newReceiver starts a receiver closed when the test ends.
func newReceiver(t *testing.T, cfg *httpfake.Config) *httpfake.Receiver {
	t.Helper()
	f := httpfake.New(cfg)
	t.Cleanup(f.Close)
	return f
}

type reply struct {
	Status     int
	Body       string
	Replayed   string // the Idempotent-Replayed header
	RequestID  string
	RetryAfter string
}

// send POSTs body to url with key in Idempotency-Key ("" sends none).
// Safe from any goroutine: it returns the error instead of failing.
func send(url, key, body string) (reply, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("Request-Id"),
		resp.Header.Get("Retry-After")}, err
}

func post(t *testing.T, url, key, body string) reply {
	t.Helper()
	r, err := send(url, key, body)
	require.NoError(t, err)
	return r
}

func TestRepeatOfAKeyIsReplayedAndPerformsNothing(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)

	first := post(t, f.URL()+"/emails", "k1", `{"to":"a@example.com"}`)
	require.Equal(t, reply{Status: 200, Body: `{"id":"eff_001"}`, RequestID: "req_1"}, first)
	again := post(t, f.URL()+"/emails", "k1", `{"to":"a@example.com"}`)
	require.Equal(t, reply{Status: 200, Body: `{"id":"eff_001"}`, Replayed: "true", RequestID: "req_2"}, again,
		"the first answer again, marked replayed")
	other := post(t, f.URL()+"/emails", "k2", `{"to":"a@example.com"}`)
	require.Equal(t, reply{Status: 200, Body: `{"id":"eff_002"}`, RequestID: "req_3"}, other, "another key is another effect")

	require.Equal(t, 2, f.Effects(), "distinct effects")
	require.Equal(t, 3, f.Requests())
	require.Equal(t, 1, f.Replays())
	reqs := f.RequestsFor("k1")
	require.Len(t, reqs, 2)
	require.Equal(t, []int{1, 2}, []int{reqs[0].Seq, reqs[1].Seq})
	require.False(t, reqs[0].Replayed)
	require.True(t, reqs[1].Replayed)
	require.Equal(t, "eff_001", reqs[1].EffectID, "a replay names the effect it replays")
	require.Equal(t, "/emails", reqs[0].URL.Path)
	require.Equal(t, http.MethodPost, reqs[0].Method)
	require.JSONEq(t, `{"to":"a@example.com"}`, string(reqs[0].Body))
	require.True(t, f.Remembers("k1"))

	effects := f.AllEffects()
	require.Len(t, effects, 2)
	require.Equal(t, "k1", effects[0].Key)
	require.Equal(t, 1, effects[0].Request.Seq)
	require.Equal(t, 200, effects[0].Status)
}

func TestSameKeyWithAnotherBodyIs422(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	post(t, f.URL(), "k1", `{"to":"a@example.com"}`)

	r := post(t, f.URL(), "k1", `{"to":"b@example.com"}`)
	require.Equal(t, http.StatusUnprocessableEntity, r.Status)
	require.Empty(t, r.Replayed)
	require.Equal(t, 1, f.Effects())
	require.Equal(t, 0, f.Replays())
}

func TestRequestWithoutAKeyIs400(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	r := post(t, f.URL(), "", `{}`)
	require.Equal(t, http.StatusBadRequest, r.Status)
	require.Contains(t, r.Body, "Idempotency-Key required")
	require.Zero(t, f.Effects())
	require.Len(t, f.RequestsFor(""), 1, "requests without a key are listed under the empty key")
}

func TestAnswerRefusesBeforeActingThenTheKeyActs(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, &httpfake.Config{RetryAfter: 1500 * time.Millisecond})
	f.Answer("k1", http.StatusServiceUnavailable, http.StatusInternalServerError)

	r := post(t, f.URL(), "k1", `{}`)
	require.Equal(t, http.StatusServiceUnavailable, r.Status)
	require.Equal(t, "2", r.RetryAfter, "Config.RetryAfter in whole seconds, rounded up")
	require.False(t, f.Remembers("k1"), "answered before acting: nothing remembered")
	r = post(t, f.URL(), "k1", `{}`)
	require.Equal(t, http.StatusInternalServerError, r.Status)
	require.Empty(t, r.RetryAfter, "only 429 and 503 carry Retry-After")
	require.Empty(t, r.Replayed)
	require.Zero(t, f.Effects())

	r = post(t, f.URL(), "k1", `{}`)
	require.Equal(t, http.StatusOK, r.Status, "the script is used up: the key acts")
	require.Equal(t, 1, f.Effects())
	require.Equal(t, 3, f.Requests())
	_, found := f.Performed("k1")
	require.True(t, found)
}

func TestAnswerNextIsUsedByAnyKeyAfterTheKeysOwnScript(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	f.AnswerNext(http.StatusTooManyRequests)
	f.Answer("k2", http.StatusConflict)

	require.Equal(t, http.StatusConflict, post(t, f.URL(), "k2", `{}`).Status, "k2's own script first")
	require.Equal(t, http.StatusTooManyRequests, post(t, f.URL(), "k1", `{}`).Status, "then the script for any key")
	require.Equal(t, http.StatusOK, post(t, f.URL(), "k2", `{}`).Status)
	require.Equal(t, 1, f.Effects())
}

func TestFailAfterActingPerformsTheEffectAndReplaysTheFailure(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	f.FailAfterActing("k1", http.StatusInternalServerError)

	require.Equal(t, http.StatusInternalServerError, post(t, f.URL(), "k1", `{}`).Status)
	again := post(t, f.URL(), "k1", `{}`)
	require.Equal(t, http.StatusInternalServerError, again.Status)
	require.Equal(t, "true", again.Replayed, "the saved failure, replayed")
	require.Equal(t, 1, f.Effects(), "performed once")
	e, found := f.Performed("k1")
	require.True(t, found, "a lookup finds the effect the failure hides")
	require.Equal(t, http.StatusInternalServerError, e.Status)

	// What httpeffect makes of the replayed failure: it will not change.
	key := idempotency.KeySpace{Namespace: "x"}.MustKey(idempotency.Str("id", "1"))
	f.FailAfterActing(key.String(), http.StatusInternalServerError)
	req, err := http.NewRequest(http.MethodPost, f.URL(), nil)
	require.NoError(t, err)
	_, err = httpeffect.Do(context.Background(), key, req, nil)
	class, _ := idempotency.Classify(err)
	require.Equal(t, idempotency.ClassUnknown, class, "a first 5xx: it may have acted")
	_, err = httpeffect.Do(context.Background(), key, req, nil)
	class, _ = idempotency.Classify(err)
	require.Equal(t, idempotency.ClassReconcile, class, "a replayed 5xx needs a lookup")
}

func TestFailAndRememberReplaysAFailureWithoutActing(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	f.FailAndRemember("k1", http.StatusInternalServerError)

	require.Equal(t, http.StatusInternalServerError, post(t, f.URL(), "k1", `{}`).Status)
	again := post(t, f.URL(), "k1", `{}`)
	require.Equal(t, reply{Status: 500, Body: `{"error":"Internal Server Error"}`, Replayed: "true", RequestID: "req_2"}, again)
	require.Zero(t, f.Effects())
	_, found := f.Performed("k1")
	require.False(t, found, "nothing to find")
	require.True(t, f.Remembers("k1"))
	require.Empty(t, f.RequestsFor("k1")[1].EffectID)
}

func TestHeldRequestKeepsItsKeyInFlight(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	entered, release := f.HoldNext()
	first := make(chan reply, 1)
	go func() {
		r, _ := send(f.URL(), "k1", `{}`)
		first <- r
	}()
	<-entered

	require.Len(t, f.AllRequests(), 1, "the held request is listed")
	require.Zero(t, f.AllRequests()[0].Status, "still being handled")
	require.Equal(t, http.StatusConflict, post(t, f.URL(), "k1", `{}`).Status, "its key is in flight")
	require.Equal(t, http.StatusOK, post(t, f.URL(), "k2", `{}`).Status, "one hold holds one request")
	require.Equal(t, 1, f.Effects())

	release()
	release() // harmless
	require.Equal(t, reply{Status: 200, Body: `{"id":"eff_002"}`, RequestID: "req_1"}, <-first)
	require.Equal(t, 2, f.Effects())
	require.Equal(t, "true", post(t, f.URL(), "k1", `{}`).Replayed)
}

func TestScriptedAnswerWaitsForTheHold(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	entered, release := f.HoldNext()
	f.Answer("k1", http.StatusServiceUnavailable)
	got := make(chan reply, 1)
	go func() {
		r, _ := send(f.URL(), "k1", `{}`)
		got <- r
	}()
	<-entered
	release()
	require.Equal(t, http.StatusServiceUnavailable, (<-got).Status, "held, then answered as scripted")
	require.Zero(t, f.Effects())
}

func TestCloseReleasesAHeldRequest(t *testing.T) {
	t.Parallel()
	f := httpfake.New(nil)
	entered, _ := f.HoldNext()
	got := make(chan reply, 1)
	go func() {
		r, _ := send(f.URL(), "k1", `{}`)
		got <- r
	}()
	<-entered
	f.Close() // would wait for ever on the held request
	require.Equal(t, http.StatusOK, (<-got).Status)
}

func TestLostAnswerIsAnUnknownOutcomeAndItsRetryIsReplayed(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	f.LoseNext()
	key := idempotency.KeySpace{Namespace: "mail"}.MustKey(idempotency.Str("user", "u1"))
	req, err := http.NewRequest(http.MethodPost, f.URL()+"/emails", strings.NewReader(`{"to":"a@example.com"}`))
	require.NoError(t, err)

	_, err = httpeffect.Do(context.Background(), key, req, nil)
	require.Error(t, err)
	class, _ := idempotency.Classify(err)
	require.Equal(t, idempotency.ClassUnknown, class, "written, then no answer: it may have acted")
	require.Equal(t, 1, f.Effects(), "it did")
	require.Len(t, f.RequestsFor(key.String()), 1, "net/http did not re-send it by itself")
	require.True(t, f.RequestsFor(key.String())[0].Lost)

	req, err = http.NewRequest(http.MethodPost, f.URL()+"/emails", strings.NewReader(`{"to":"a@example.com"}`))
	require.NoError(t, err)
	res, err := httpeffect.Do(context.Background(), key, req, nil)
	require.NoError(t, err)
	require.Equal(t, `{"id":"eff_001"}`, string(res.Body), "the retry gets the first effect")
	require.Equal(t, 1, f.Effects())
	require.Equal(t, 1, f.Replays())
	require.Equal(t, http.StatusOK, post(t, f.URL(), "k2", `{}`).Status, "LoseNext lost one answer only")
}

// The evidence httpeffect keeps for each attempt comes from the answer's
// Request-Id and Idempotent-Replayed headers.
func TestEffectRecordsTheRequestIDAndTheReplay(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	f.LoseNext()
	keys := idempotency.KeySpace{Namespace: "mail"}
	eff := httpeffect.Effect("mail",
		func(user string) (idempotency.Key, error) { return keys.Key(idempotency.Str("user", user)) },
		func(ctx context.Context, user string) (*http.Request, error) {
			return http.NewRequestWithContext(ctx, http.MethodPost, f.URL(), strings.NewReader(user))
		}, nil)
	exec, err := idempotency.NewExecutor(idempotency.NewMemStore(nil), &idempotency.Config{
		Sleep: func(context.Context, time.Duration) error { return nil },
	})
	require.NoError(t, err)

	res, err := idempotency.Run(context.Background(), exec, eff, "u1")
	require.NoError(t, err)
	require.Equal(t, idempotency.OutcomeApplied, res.Outcome)
	require.Len(t, res.Attempts, 2)
	require.Equal(t, idempotency.AttemptUnknown, res.Attempts[0].Class, "the lost answer")
	require.Equal(t, "req_2", res.Attempts[1].RequestID)
	require.True(t, res.Attempts[1].Replayed)
	require.Equal(t, 1, f.Effects())
}

func TestIgnoresKeyMakesEveryAcceptedRequestAnEffect(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, &httpfake.Config{
		IgnoresKey: true,
		Key:        func(r *http.Request, _ []byte) string { return r.URL.Query().Get("txid") },
	})
	f.Answer("cv1", http.StatusServiceUnavailable)
	postback := f.URL() + "/postback?txid=cv1"

	require.Equal(t, http.StatusServiceUnavailable, post(t, postback, "", "").Status)
	require.Zero(t, f.Effects(), "a scripted answer is given before acting")
	for range 3 {
		r := post(t, postback, "same-key", "")
		require.Equal(t, http.StatusOK, r.Status)
		require.Empty(t, r.Replayed, "nothing is remembered")
	}
	require.Equal(t, http.StatusOK, post(t, f.URL()+"/postback", "", "").Status, "no key is no refusal")

	require.Equal(t, 4, f.Effects(), "every accepted request is an effect")
	require.Equal(t, 5, f.Requests())
	require.Len(t, f.RequestsFor("cv1"), 4)
	require.Equal(t, "cv1", f.RequestsFor("cv1")[0].URL.Query().Get("txid"))
	e, found := f.Performed("cv1")
	require.True(t, found)
	require.Equal(t, "eff_001", e.ID, "the first effect under the key")
	require.False(t, f.Remembers("cv1"))
}

func TestOneHundredConcurrentSendsOfOneKeyPerformOneEffect(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	const n = 100
	replies := make([]reply, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { replies[i], errs[i] = send(f.URL(), "k1", `{"to":"a@example.com"}`) })
	}
	wg.Wait()

	acted := 0
	for i, r := range replies {
		require.NoError(t, errs[i])
		switch {
		case r.Status == http.StatusOK && r.Replayed == "":
			acted++
			require.Equal(t, `{"id":"eff_001"}`, r.Body)
		case r.Status == http.StatusOK:
			require.Equal(t, `{"id":"eff_001"}`, r.Body, "a replay of the one effect")
		default:
			require.Equal(t, http.StatusConflict, r.Status, "in flight under the same key")
		}
	}
	require.Equal(t, 1, acted, "one request acted")
	require.Equal(t, 1, f.Effects())
	require.Equal(t, n, f.Requests())
}

func TestConcurrentRepeatsOfAHeldKeyAreAll409(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	entered, release := f.HoldNext()
	first := make(chan reply, 1)
	go func() {
		r, _ := send(f.URL(), "k1", `{}`)
		first <- r
	}()
	<-entered

	const n = 99
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := send(f.URL(), "k1", `{}`)
			if err == nil {
				statuses[i] = r.Status
			}
		})
	}
	wg.Wait()
	for _, s := range statuses {
		require.Equal(t, http.StatusConflict, s)
	}
	release()
	require.Equal(t, http.StatusOK, (<-first).Status)
	require.Equal(t, 1, f.Effects())
	require.Equal(t, n+1, f.Requests())
}

func TestWindowForgetsTheKeyButNotTheEffect(t *testing.T) {
	t.Parallel()
	clock := clocktest.New()
	f := newReceiver(t, &httpfake.Config{Window: time.Hour, Now: clock.Now})
	post(t, f.URL(), "k1", `{}`)
	clock.Advance(time.Hour - time.Second)
	require.Equal(t, "true", post(t, f.URL(), "k1", `{}`).Replayed)

	clock.Advance(time.Second)
	require.False(t, f.Remembers("k1"))
	r := post(t, f.URL(), "k1", `{}`)
	require.Empty(t, r.Replayed)
	require.Equal(t, `{"id":"eff_002"}`, r.Body, "past the window a repeat acts again")
	require.Equal(t, 2, f.Effects())
	e, found := f.Performed("k1")
	require.True(t, found)
	require.Equal(t, "eff_001", e.ID, "a lookup still finds the first")
	require.Equal(t, clocktest.Start, e.At)
}

func TestRespondRefusesOrShapesTheAnswer(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, &httpfake.Config{
		IDPrefix: "msg_",
		Respond: func(r *httpfake.Request) (int, []byte) {
			var m struct{ To string }
			if json.Unmarshal(r.Body, &m) != nil || m.To == "" {
				return http.StatusBadRequest, []byte(`{"error":"invalid message"}`)
			}
			return http.StatusCreated, []byte(`{"id":"` + r.EffectID + `","to":"` + m.To + `"}`)
		},
	})

	r := post(t, f.URL(), "k1", `{}`)
	require.Equal(t, http.StatusBadRequest, r.Status)
	require.False(t, f.Remembers("k1"), "a refusal is not remembered")
	require.Zero(t, f.Effects())

	r = post(t, f.URL(), "k1", `{"to":"a@example.com"}`)
	require.Equal(t, reply{Status: 201, Body: `{"id":"msg_001","to":"a@example.com"}`, RequestID: "req_2"}, r,
		"the refusal used no id")
	r = post(t, f.URL(), "k1", `{"to":"a@example.com"}`)
	require.Equal(t, reply{Status: 201, Body: `{"id":"msg_001","to":"a@example.com"}`, Replayed: "true", RequestID: "req_3"}, r)
}

// A provider that takes its key as a UUID in the JSON body, and answers
// lookups at another method of the same path.
func TestKeyFromTheBodyAndALookupEndpoint(t *testing.T) {
	t.Parallel()
	var f *httpfake.Receiver
	f = newReceiver(t, &httpfake.Config{
		Pattern: "POST /v1/transfers",
		Key: func(_ *http.Request, body []byte) string {
			var b struct {
				ID string `json:"client_transaction_id"`
			}
			_ = json.Unmarshal(body, &b)
			return b.ID
		},
		Other: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			e, found := f.Performed(r.URL.Query().Get("id"))
			if !found {
				http.NotFound(w, r)
				return
			}
			_, _ = w.Write(e.Body)
		}),
	})
	body := `{"client_transaction_id":"6f1c2b9e-1b1a-5c3d-9e2f-0a1b2c3d4e5f","amount":100}`
	require.Equal(t, http.StatusOK, post(t, f.URL()+"/v1/transfers", "", body).Status)
	require.Equal(t, "true", post(t, f.URL()+"/v1/transfers", "", body).Replayed)
	require.Equal(t, http.StatusBadRequest, post(t, f.URL()+"/v1/transfers", "", `{"amount":100}`).Status, "no key in the body")

	lookup := func(id string) (int, string) {
		resp, err := http.Get(f.URL() + "/v1/transfers?id=" + url.QueryEscape(id))
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	status, got := lookup("6f1c2b9e-1b1a-5c3d-9e2f-0a1b2c3d4e5f")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"id":"eff_001"}`, got)
	status, _ = lookup("unknown")
	require.Equal(t, http.StatusNotFound, status)
	require.Equal(t, 3, f.Requests(), "lookups are not the receiver's requests")
	require.Equal(t, 1, f.Effects())
}

func TestHeaderNameChangesTheKeyHeader(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, &httpfake.Config{HeaderName: "X-Request-Key"})
	req, err := http.NewRequest(http.MethodPost, f.URL(), bytes.NewReader(nil))
	require.NoError(t, err)
	req.Header.Set("X-Request-Key", "k1")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "k1", f.AllEffects()[0].Key)

	r := post(t, f.URL(), "k1", "") // Idempotency-Key only
	require.Equal(t, http.StatusBadRequest, r.Status)
	require.Contains(t, r.Body, "X-Request-Key required")
}

func TestResetForgetsEverything(t *testing.T) {
	t.Parallel()
	f := newReceiver(t, nil)
	post(t, f.URL(), "k1", `{}`)
	f.Answer("k1", http.StatusServiceUnavailable)
	f.LoseNext()
	f.Reset()

	require.Zero(t, f.Effects())
	require.Zero(t, f.Requests())
	require.False(t, f.Remembers("k1"))
	r := post(t, f.URL(), "k1", `{}`)
	require.Equal(t, reply{Status: 200, Body: `{"id":"eff_001"}`, RequestID: "req_1"}, r, "no script, no loss, numbers from 1")
}

func TestNewPanicsOnAnInvalidConfig(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]*httpfake.Config{
		"negative window":       {Window: -time.Second},
		"invalid header name":   {HeaderName: "Idempotency Key"},
		"other without pattern": {Other: http.NotFoundHandler()},
		"invalid pattern":       {Pattern: "POST"},
	} {
		require.Panics(t, func() { httpfake.New(cfg).Close() }, name)
	}
}
