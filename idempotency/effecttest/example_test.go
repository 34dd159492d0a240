package effecttest_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/effecttest"
)

// signup is one intent: welcome this user, at this address.
type signup struct{ UserID, Email string }

var welcomeKeys = idempotency.KeySpace{Namespace: "mail.welcome", Version: 1}

// newWelcomeEmail is the team's effect, as production builds it. The email
// API deduplicates by Idempotency-Key for a day, so a call that may have
// acted is sent again under the same key (ExpiredRetry).
func newWelcomeEmail(url string) *idempotency.Effect[signup, int] {
	return &idempotency.Effect[signup, int]{
		Name: "mail.welcome",
		Key: func(s signup) (idempotency.Key, error) {
			return welcomeKeys.Key(idempotency.Str("user", s.UserID))
		},
		Fingerprint: func(s signup) ([]byte, error) { return idempotency.FingerprintJSON(s.Email) },
		Call: func(ctx context.Context, key idempotency.Key, s signup) (int, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(s.Email))
			if err != nil {
				return 0, idempotency.Permanent(err)
			}
			req.Header.Set("Idempotency-Key", key.String())
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return 0, idempotency.Unknown(err, 0)
			}
			_ = resp.Body.Close()
			if resp.StatusCode >= 300 {
				return 0, idempotency.Unknown(fmt.Errorf("status %d", resp.StatusCode), 0)
			}
			return resp.StatusCode, nil
		},
		Expired:     idempotency.ExpiredRetry,
		DedupWindow: 24 * time.Hour,
	}
}

// testWelcomeEmailContract is the test in the package documentation; in a
// service it is a Test function and t its *testing.T.
func testWelcomeEmailContract(t effecttest.TB) bool {
	// The email API deduplicates by Idempotency-Key. Count distinct
	// keys, not requests: a replay under the same key hits it again.
	var mu sync.Mutex
	sent := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		sent[r.Header.Get("Idempotency-Key")] = true
	}))
	defer srv.Close()

	return effecttest.Run(t, effecttest.Case[signup, int]{
		Effect: newWelcomeEmail(srv.URL), // exactly as production builds it
		Inputs: []signup{{"u1", "a@example.com"}, {"u2", "b@example.com"}, {"u3", "c@example.com"}, {"u4", "d@example.com"}},
		Mutate: func(s signup) signup { s.Email = "other+" + s.Email; return s }, // same key, other payload
		NewStore: func(now func() time.Time) idempotency.Store {
			return idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: now}) // or pgguard.New(pool, &pgguard.Config{Now: now})
		},
		Effects: func() int { mu.Lock(); defer mu.Unlock(); return len(sent) },
	})
}

// printTB prints failures; a test passes its *testing.T instead.
type printTB struct{}

func (printTB) Helper()                           {}
func (printTB) Errorf(format string, args ...any) { fmt.Printf(format+"\n", args...) }
func (printTB) Logf(string, ...any)               {}

func Example() {
	fmt.Println("contract holds:", testWelcomeEmailContract(printTB{}))
	// Output: contract holds: true
}
