package stripeeffect

import (
	"net/http"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/idempotency"
)

// DedupWindow is how long Stripe remembers an idempotency key: at least 24
// hours after its first use. Within it, a request repeated with the same key
// and parameters gets the first response back instead of acting again. The
// effects of this package set it as their Effect.DedupWindow.
const DedupWindow = 24 * time.Hour

// DefaultTimeout is the timeout, per attempt, of the HTTP client NewAPI
// builds when APIConfig.HTTPClient is nil.
const DefaultTimeout = 30 * time.Second

// DefaultRetry is the retry policy the effect constructors of this package
// set as Effect.Retry: three attempts per run, 0.5 s then 1 s apart (a
// Retry-After up to 5 s wins), all under the same key; after a run that
// gave up, the key waits 2 s, doubling with each claim up to an hour (or
// Stripe's longer Retry-After), before another run may try. It gives back, at the
// executor, the two retries NewAPI takes away from stripe-go. The
// constructors copy it when called; set the returned effect's Retry to nil
// to use the executor's Config.Retry instead.
var DefaultRetry = idempotency.RetryPolicy{
	MaxAttempts:    3,
	InitialBackoff: 500 * time.Millisecond,
	MaxBackoff:     5 * time.Second,
	RunBackoff:     2 * time.Second,
	MaxRunBackoff:  time.Hour,
}

// RefusalMemory is how long a sweep skips an effect of this package whose
// last record Stripe refused with the same request (Effect.RememberRefusal):
// a refusal that cannot change (a credit in a currency the customer's
// balance does not hold) is sent once a week, not at every tick. A
// corrected request is sent at once; sweep.Config.RetryRefused sends anyway.
const RefusalMemory = 7 * 24 * time.Hour

// APIConfig configures NewAPI. The zero value (or nil) talks to Stripe.
type APIConfig struct {
	// URL is the API's base URL. Empty means https://api.stripe.com. Point
	// it at a stripefake.Server (Server.URL) or at stripe-mock in tests.
	URL string

	// HTTPClient sends the requests. Nil means a client with a
	// DefaultTimeout (30 s) timeout. Keep the effect's lease well above
	// the timeout times the in-run attempts (with DefaultRetry: 3 × 30 s +
	// 1.5 s, against the executor's default lease of 5 minutes).
	HTTPClient *http.Client

	// Logger is stripe-go's logger. Nil means none: the adapters return
	// every failure, classified, and the executor's Config.Logger reports
	// each run's outcome.
	Logger stripe.LeveledLoggerInterface
}

// NewAPI returns a stripe-go client for secretKey whose own network retries
// are off (MaxNetworkRetries 0), so that the executor's retry policy is the
// only one: a retryable failure reaches the executor, which retries in-run
// under the same key (Effect.Retry, DefaultRetry for this package's
// effects) or releases the claim for the next run. With stripe-go's
// default of 2 retries inside each of the executor's attempts, one run
// could make up to 9 requests and hold its claim through stripe-go's
// uncancellable sleeps.
//
// The adapters work with any *client.API, including one with retries on:
// stripe-go keeps the request's Idempotency-Key on its own retries.
// cfg may be nil.
func NewAPI(secretKey string, cfg *APIConfig) *client.API {
	var c APIConfig
	if cfg != nil {
		c = *cfg
	}
	bc := &stripe.BackendConfig{
		HTTPClient:        c.HTTPClient,
		LeveledLogger:     c.Logger,
		MaxNetworkRetries: stripe.Int64(0),
	}
	if bc.HTTPClient == nil {
		bc.HTTPClient = &http.Client{Timeout: DefaultTimeout}
	}
	if bc.LeveledLogger == nil {
		bc.LeveledLogger = &stripe.LeveledLogger{Level: stripe.LevelNull}
	}
	if c.URL != "" {
		bc.URL = stripe.String(c.URL)
	}
	return client.New(secretKey, stripe.NewBackendsWithConfig(bc))
}
