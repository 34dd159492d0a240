package idempotency

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// RetryPolicy bounds in-run retries and spaces out later runs. Between
// in-run attempts the claim stays held and the same provider key is reused.
type RetryPolicy struct {
	// MaxAttempts is the number of provider calls per run. Zero means 1:
	// no in-run retries, the next run (or sweep) retries.
	MaxAttempts int
	// InitialBackoff is the first delay between in-run attempts, doubled
	// after each attempt. Zero means 200ms. A provider's Retry-After, when
	// longer, wins.
	InitialBackoff time.Duration
	// MaxBackoff caps the in-run delay. Zero means 5s. A provider asking
	// for longer is not waited for in-run: the claim is released with the
	// provider's delay as its due time.
	MaxBackoff time.Duration
	// RunBackoff is how long a released record waits before the next run
	// may claim it, after its first release; it doubles with each claim
	// (with ±20% jitter) up to MaxRunBackoff. A provider's Retry-After, when
	// longer, wins. Zero (the default) means no wait beyond Retry-After.
	RunBackoff time.Duration
	// MaxRunBackoff caps RunBackoff's growth. Zero means 1 hour.
	MaxRunBackoff time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 1
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = 200 * time.Millisecond
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = 5 * time.Second
	}
	if p.MaxRunBackoff <= 0 {
		p.MaxRunBackoff = time.Hour
	}
	return p
}

// Event reports one finished run, for metrics and tracing (see package
// effectotel): duplicates collapsed (AlreadyApplied, InFlight), provider
// calls made and saved, attempts and their evidence.
type Event struct {
	Effect    string
	Namespace string
	Key       Key // logs as its namespace only in HMAC mode
	Outcome   Outcome
	Calls     int
	// Attempts is the evidence of this run's attempts.
	Attempts []Attempt
	// Reconciled reports that the run asked the provider about a record in
	// doubt.
	Reconciled bool
	// LostResult is Result.LostResult: a provider success the ledger could
	// not record, encoded.
	LostResult []byte
	Err        error
	// Start is when the run began (time.Now, with its monotonic reading)
	// and Duration how long it took.
	Start    time.Time
	Duration time.Duration
}

// Config configures an Executor. The zero value is ready to use.
type Config struct {
	// Logger receives one record per run: Debug for applied and
	// already-applied outcomes, Info for in-flight, skipped and not-due,
	// Warn for failures, Error for a provider success that could not be
	// recorded (with the result). Keys built in HMAC mode are logged as
	// their namespace only. Nil means no logging.
	Logger *slog.Logger
	// OnOutcome, when set, is called after every run.
	OnOutcome func(ctx context.Context, ev Event)
	// Lease is the default claim lease. Zero means 5 minutes.
	Lease time.Duration
	// Retry is the default retry policy. The zero value makes one attempt
	// per run and no wait between runs beyond a provider's Retry-After.
	Retry RetryPolicy
	// Middleware runs around every provider attempt, first to last (see
	// Middleware). Nil means none.
	Middleware []Middleware
	// Now is the executor's clock, for the provider's window within a run
	// and the time of each attempt. Nil means time.Now. Tests share one
	// fake clock with the store.
	Now func() time.Time
	// Sleep waits between in-run attempts; it returns early with ctx's
	// error when ctx is done. Nil means a timer. Tests pass one that
	// advances their fake clock instead of waiting.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Executor runs effects against a Store. It is safe for concurrent use.
type Executor struct {
	store  Store
	cfg    Config
	logger *slog.Logger
	sleep  func(ctx context.Context, d time.Duration) error
	now    func() time.Time
	mw     []Middleware
}

// NewExecutor returns an executor over store. cfg may be nil. A nil store
// is ErrNilStore; a negative lease is ErrInvalidEffect.
func NewExecutor(store Store, cfg *Config) (*Executor, error) {
	if store == nil {
		return nil, ErrNilStore
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Lease < 0 {
		return nil, fmt.Errorf("%w: negative lease", ErrInvalidEffect)
	}
	if c.Lease == 0 {
		c.Lease = 5 * time.Minute
	}
	now := c.Now
	if now == nil {
		now = time.Now
	}
	sleep := c.Sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	return &Executor{store: store, cfg: c, logger: c.Logger, sleep: sleep, now: now,
		mw: append([]Middleware(nil), c.Middleware...)}, nil
}

// Store returns the executor's store.
func (x *Executor) Store() Store { return x.store }

// Now returns the time on the executor's clock (Config.Now).
func (x *Executor) Now() time.Time { return x.now() }

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (x *Executor) report(ctx context.Context, ev Event) {
	result := ev.LostResult
	if x.cfg.OnOutcome != nil {
		x.cfg.OnOutcome(ctx, ev)
	}
	if x.logger == nil {
		return
	}
	level := slog.LevelWarn
	switch ev.Outcome {
	case OutcomeApplied, OutcomeAlreadyApplied, OutcomeReconciled:
		level = slog.LevelDebug
	case OutcomeInFlight, OutcomeSkipped, OutcomeNotDue:
		level = slog.LevelInfo
	}
	if result != nil {
		level = slog.LevelError
	}
	if !x.logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("effect", ev.Effect),
		slog.String("namespace", ev.Namespace),
		slog.Any("key", ev.Key),
		slog.String("outcome", ev.Outcome.String()),
		slog.Int("calls", ev.Calls),
		slog.Duration("duration", ev.Duration),
	}
	if ev.Reconciled {
		attrs = append(attrs, slog.Bool("reconciled", true))
	}
	if n := len(ev.Attempts); n > 0 {
		classes := make([]string, n)
		for i, a := range ev.Attempts {
			classes[i] = string(a.Class)
		}
		attrs = append(attrs, slog.String("attempts", strings.Join(classes, ",")))
	}
	if ev.Err != nil {
		attrs = append(attrs, slog.String("error", redactKey(ev.Err.Error(), ev.Key)))
	}
	if result != nil {
		// A provider success the ledger could not record: keep it where an
		// operator sees it.
		attrs = append(attrs, slog.String("result", string(result)))
	}
	x.logger.LogAttrs(ctx, level, "idempotency: effect run", attrs...)
}

// redactKey removes an HMAC-mode key (every generation) from s.
func redactKey(s string, k Key) string {
	if !k.HMAC() || k.IsZero() {
		return s
	}
	return strings.ReplaceAll(s, k.Base().String(), "<key>")
}
