package httpfake_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
	"github.com/effectonce/effectonce/idempotency/httpeffect"
	"github.com/effectonce/effectonce/idempotency/httpeffect/httpfake"
)

type signup struct{ User, Email string }

// printTB stands in for the *testing.T a test passes to effecttest.Run:
// it prints what would fail the test.
type printTB struct{}

func (printTB) Helper()                           {}
func (printTB) Errorf(format string, args ...any) { fmt.Printf("FAIL: "+format+"\n", args...) }
func (printTB) Logf(string, ...any)               {}

// A contract test of a welcome email sent through httpeffect, against a
// fake mail API that deduplicates by Idempotency-Key. In a test, pass t to
// effecttest.Run and defer mail.Close().
func Example() {
	mail := httpfake.New(nil) // deduplicates by Idempotency-Key; answers 200 {"id":"eff_001"}
	defer mail.Close()

	keys := idempotency.KeySpace{Namespace: "mail.welcome", Version: 1}
	welcome := httpeffect.Effect("mail.welcome",
		func(s signup) (idempotency.Key, error) { return keys.Key(idempotency.Str("user", s.User)) },
		func(ctx context.Context, s signup) (*http.Request, error) {
			body, err := json.Marshal(map[string]string{"to": s.Email, "template": "welcome"})
			if err != nil {
				return nil, err
			}
			return http.NewRequestWithContext(ctx, http.MethodPost, mail.URL()+"/emails", bytes.NewReader(body))
		},
		nil)

	ok := effecttest.Run(printTB{}, effecttest.Case[signup, httpeffect.Response]{
		Effect: welcome,
		Inputs: []signup{{"u1", "a@example.com"}, {"u2", "b@example.com"}, {"u3", "c@example.com"}, {"u4", "d@example.com"}},
		Mutate: func(s signup) signup { s.Email = "other+" + s.Email; return s },
		NewStore: func(now func() time.Time) idempotency.Store {
			return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now})
		},
		Effects: mail.Effects, // distinct effects, never requests
	})
	fmt.Println("contract kept:", ok)
	// The crash case sent one key twice: the second request was a replay.
	fmt.Println("effects:", mail.Effects(), "requests:", mail.Requests(), "replays:", mail.Replays())
	// What a Find would ask: was u1's email sent?
	sent, found := mail.Performed(keys.MustKey(idempotency.Str("user", "u1")).String())
	fmt.Println(found, sent.ID, string(sent.Body))
	// Output:
	// contract kept: true
	// effects: 4 requests: 5 replays: 1
	// true eff_001 {"id":"eff_001"}
}
