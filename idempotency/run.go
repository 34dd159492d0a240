package idempotency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Outcome says what happened to one run of an effect.
type Outcome uint8

const (
	// OutcomeApplied: the provider was called in this run and the result
	// recorded.
	OutcomeApplied Outcome = iota + 1
	// OutcomeAlreadyApplied: an applied or skipped record was already
	// there; its stored result is returned and the provider was not called.
	OutcomeAlreadyApplied
	// OutcomeSkipped: the effect's Call decided there was nothing to do and
	// the skip was recorded.
	OutcomeSkipped
	// OutcomeInFlight: another worker holds a live claim on the key.
	OutcomeInFlight
	// OutcomeRetryable: the provider call failed retryably; the claim was
	// released and the key kept for the next attempt.
	OutcomeRetryable
	// OutcomePermanent: the provider refused; the record was marked failed.
	OutcomePermanent
	// OutcomeMismatch: the key is used with another payload.
	OutcomeMismatch
	// OutcomeNeedsReconciliation: the real state at the provider is unknown
	// and a blind retry could duplicate the effect.
	OutcomeNeedsReconciliation
	// OutcomeError: the store failed (or the completion did). Nothing was
	// lost: the record is absent, or pending under a lease that will
	// expire, and the next run decides by the effect's ExpiredPolicy.
	OutcomeError
)

var outcomeNames = [...]string{
	OutcomeApplied:             "applied",
	OutcomeAlreadyApplied:      "already_applied",
	OutcomeSkipped:             "skipped",
	OutcomeInFlight:            "in_flight",
	OutcomeRetryable:           "retryable",
	OutcomePermanent:           "permanent",
	OutcomeMismatch:            "mismatch",
	OutcomeNeedsReconciliation: "needs_reconciliation",
	OutcomeError:               "error",
}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) && outcomeNames[o] != "" {
		return outcomeNames[o]
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Result is what one run of an effect did.
type Result[Out any] struct {
	Outcome Outcome
	Key     Key
	// Value is the result: fresh for Applied and Skipped, decoded from the
	// ledger for AlreadyApplied.
	Value Out
	// Record is the ledger record written or met, where there is one.
	Record Record
	// Calls is the number of times this run invoked the effect's Call (0
	// unless the claim was acquired; more than 1 only with in-run
	// retries). A Call may refuse before reaching the provider, so count
	// real effects at the provider.
	Calls int
	// Err is the cause for failures; Run returns it too.
	Err error
}

// RetryPolicy bounds in-run retries of retryable provider errors. Between
// attempts the claim stays held and the same key is reused.
type RetryPolicy struct {
	// MaxAttempts is the number of provider calls per run. Zero means 1:
	// no in-run retries, the next run (or sweep) retries.
	MaxAttempts int
	// InitialBackoff is the first delay, doubled after each attempt. Zero
	// means 200ms. A provider's Retry-After, when longer, wins.
	InitialBackoff time.Duration
	// MaxBackoff caps the delay. Zero means 5s.
	MaxBackoff time.Duration
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
	return p
}

// Event reports one finished run, for metrics: count duplicates collapsed
// (AlreadyApplied, InFlight) and provider calls saved.
type Event struct {
	Effect    string
	Namespace string
	Key       Key // logs as its namespace only in HMAC mode
	Outcome   Outcome
	Calls     int
	Err       error
	Duration  time.Duration
}

// Config configures an Executor. The zero value is ready to use.
type Config struct {
	// Logger receives one record per run: Debug for applied and
	// already-applied outcomes, Info for in-flight, Warn for failures.
	// Keys built in HMAC mode are logged as their namespace only. Nil
	// means no logging.
	Logger *slog.Logger
	// OnOutcome, when set, is called after every run.
	OnOutcome func(ctx context.Context, ev Event)
	// Lease is the default claim lease. Zero means 5 minutes.
	Lease time.Duration
	// Retry is the default in-run retry policy. The zero value makes one
	// attempt per run.
	Retry RetryPolicy
}

// Executor runs effects against a Store. It is safe for concurrent use.
type Executor struct {
	store  Store
	cfg    Config
	logger *slog.Logger
	sleep  func(ctx context.Context, d time.Duration) error
}

// NewExecutor returns an executor over store. cfg may be nil.
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
	return &Executor{store: store, cfg: c, logger: c.Logger, sleep: sleepCtx}, nil
}

// Store returns the executor's store.
func (x *Executor) Store() Store { return x.store }

// Run performs one delivery of an effect's intent, exactly once across every
// delivery of the same intent:
//
//  1. The key and fingerprint are computed once from in, before anything
//     else, and carried through to completion.
//  2. One store call claims the key or fetches its active record. An
//     applied or skipped record returns its stored result without calling
//     the provider; a live claim elsewhere returns OutcomeInFlight; a
//     fingerprint that differs returns a *MismatchError.
//  3. The provider is called with the key (retried in-run per RetryPolicy).
//  4. Success is recorded with one store call, together with OnComplete.
//  5. Retryable failures release the claim; permanent ones mark it failed;
//     unknown states park it for reconciliation.
//
// The returned error is nil for Applied, AlreadyApplied, Skipped and
// InFlight, and otherwise matches the outcome's sentinel (ErrRetryable,
// ErrPermanent, ErrFingerprintMismatch, ErrNeedsReconciliation) or is the
// store's error. Invalid effects and keys fail before the store is touched.
func Run[In, Out any](ctx context.Context, x *Executor, e *Effect[In, Out], in In) (Result[Out], error) {
	start := time.Now()
	res, err := run(ctx, x, e, in)
	res.Err = err
	if x != nil && e != nil && res.Outcome != 0 {
		x.report(ctx, e.Name, res.Key, res.Outcome, res.Calls, err, time.Since(start))
	}
	return res, err
}

func run[In, Out any](ctx context.Context, x *Executor, e *Effect[In, Out], in In) (Result[Out], error) {
	var res Result[Out]
	if x == nil {
		return res, fmt.Errorf("%w: nil executor", ErrInvalidEffect)
	}
	if err := e.Validate(); err != nil {
		return res, err
	}
	// Key and fingerprint: computed once, never again (the call may mutate in).
	key, fp, err := e.Identity(in)
	if err != nil {
		return res, err
	}
	res.Key = key
	lease := e.Lease
	if lease == 0 {
		lease = x.cfg.Lease
	}
	codec := e.codec()

	// Claim with a context that cannot be cancelled half way: a cancelled
	// statement may still commit, leaving a pending row nobody holds.
	if err := ctx.Err(); err != nil {
		res.Outcome = OutcomeError
		return res, fmt.Errorf("idempotency: %s: %w", e.Name, err)
	}
	claim, err := x.store.Claim(context.WithoutCancel(ctx), ClaimRequest{
		Key:          key.String(),
		Namespace:    key.Namespace(),
		Fingerprint:  fp,
		Lease:        lease,
		TakeOver:     e.Expired == ExpiredRetry || e.Expired == ExpiredRetryUncalled,
		OnlyUncalled: e.Expired == ExpiredRetryUncalled,
		Window:       e.DedupWindow,
	})
	if err != nil {
		res.Outcome = OutcomeError
		return res, fmt.Errorf("idempotency: %s: claim: %w", e.Name, err)
	}
	res.Record = claim.Record
	if !claim.Acquired {
		return existing(res, claim, fp, codec)
	}

	// We hold the claim under claim.Record.Token.
	token := claim.Record.Token
	if e.Expired == ExpiredRetryUncalled {
		if err := x.store.MarkCalling(ctx, key.String(), token); err != nil {
			// Nothing was called: the claim stays pending and expires;
			// being uncalled, it is then taken over.
			res.Outcome = OutcomeError
			if errors.Is(err, ErrClaimLost) {
				res.Outcome = OutcomeInFlight
			}
			return res, fmt.Errorf("idempotency: %s: mark calling: %w", e.Name, err)
		}
	}
	out, calls, callErr := callProvider(ctx, x, e, key, in)
	res.Calls = calls

	if callErr == nil || errors.Is(callErr, ErrSkip) {
		status, outcome := StatusApplied, OutcomeApplied
		if callErr != nil {
			status, outcome = StatusSkipped, OutcomeSkipped
		}
		enc, err := codec.Encode(out)
		if err != nil {
			// The effect happened but cannot be recorded: park it so nobody
			// retries blindly, and never write an applied row without a result.
			_ = x.store.Release(context.WithoutCancel(ctx), ReleaseRequest{
				Key: key.String(), Token: token, Park: true, Reason: "encode result: " + err.Error(),
			})
			res.Outcome = OutcomeNeedsReconciliation
			return res, fmt.Errorf("idempotency: %s: %w: %w: %w", e.Name, ErrNeedsReconciliation, ErrEncodeResult, err)
		}
		var hook func(context.Context, any) error
		if e.OnComplete != nil {
			hook = func(ctx context.Context, tx any) error { return e.OnComplete(ctx, tx, in, out) }
		}
		// Record even if the caller's context was cancelled after the call:
		// the effect happened, and a lost record costs a reconciliation.
		rec, err := x.store.Complete(context.WithoutCancel(ctx), CompleteRequest{
			Key: key.String(), Token: token, Status: status, Result: enc, Hook: hook,
		})
		if err != nil {
			if errors.Is(err, ErrClaimLost) {
				// Another worker took over after our lease expired; it
				// will record the (provider-deduplicated) result.
				res.Outcome = OutcomeInFlight
				return res, fmt.Errorf("idempotency: %s: complete: %w", e.Name, err)
			}
			res.Outcome = OutcomeError
			return res, fmt.Errorf("idempotency: %s: complete: %w", e.Name, err)
		}
		res.Record, res.Value, res.Outcome = rec, out, outcome
		return res, nil
	}

	// The call failed: decide the claim's fate by the error's class, with a
	// context that survives the caller's cancellation so a claim is never
	// left held for no reason.
	bg := context.WithoutCancel(ctx)
	class, _ := Classify(callErr)
	switch class {
	case ClassPermanent, ClassMismatch:
		var hook func(context.Context, any) error
		if e.OnFail != nil {
			hook = func(ctx context.Context, tx any) error { return e.OnFail(ctx, tx, in, callErr) }
		}
		rec, err := x.store.Fail(bg, FailRequest{Key: key.String(), Token: token, Reason: callErr.Error(), Hook: hook})
		if err != nil && !errors.Is(err, ErrClaimLost) {
			// Not recorded: the claim stays pending and expires.
			res.Outcome = OutcomeError
			return res, fmt.Errorf("idempotency: %s: fail after %w: %w", e.Name, callErr, err)
		}
		if err == nil {
			res.Record = rec
		}
		if class == ClassMismatch {
			res.Outcome = OutcomeMismatch
			return res, fmt.Errorf("idempotency: %s: provider: %w", e.Name, callErr)
		}
		res.Outcome = OutcomePermanent
		return res, fmt.Errorf("idempotency: %s: %w", e.Name, callErr)
	case ClassReconcile:
		_ = x.store.Release(bg, ReleaseRequest{Key: key.String(), Token: token, Park: true, Reason: callErr.Error()})
		res.Outcome = OutcomeNeedsReconciliation
		return res, fmt.Errorf("idempotency: %s: %w", e.Name, callErr)
	default:
		if err := x.store.Release(bg, ReleaseRequest{Key: key.String(), Token: token, Reason: callErr.Error()}); err != nil && !errors.Is(err, ErrClaimLost) {
			res.Outcome = OutcomeError
			return res, fmt.Errorf("idempotency: %s: release after %v: %w", e.Name, callErr, err)
		}
		res.Outcome = OutcomeRetryable
		if class == ClassUnknown {
			return res, fmt.Errorf("idempotency: %s: %w: %w", e.Name, ErrRetryable, callErr)
		}
		return res, fmt.Errorf("idempotency: %s: %w", e.Name, callErr)
	}
}

// existing turns a claim that met an active record into a result. The
// fingerprint is checked first, on every path.
func existing[Out any](res Result[Out], claim Claim, fp []byte, codec Codec[Out]) (Result[Out], error) {
	rec := claim.Record
	if !rec.FingerprintMatches(fp) {
		res.Outcome = OutcomeMismatch
		return res, &MismatchError{Key: rec.Key, Stored: rec}
	}
	switch {
	case rec.Status.Done():
		v, err := codec.Decode(rec.Result)
		if err != nil {
			res.Outcome = OutcomeError
			return res, fmt.Errorf("idempotency: %w: %w", ErrDecodeResult, err)
		}
		res.Value, res.Outcome = v, OutcomeAlreadyApplied
		return res, nil
	case claim.Stuck:
		res.Outcome = OutcomeNeedsReconciliation
		reason := "claim expired and may not be taken over"
		if rec.LeaseUntil.IsZero() {
			reason = "released claim is past the provider's dedup window"
		}
		if rec.Parked {
			reason = "parked: " + rec.Reason
		}
		return res, fmt.Errorf("%w: %s (attempts %d)", ErrNeedsReconciliation, reason, rec.Attempts)
	default:
		res.Outcome = OutcomeInFlight
		return res, nil
	}
}

// call invokes the provider, retrying retryable errors in-run as the policy
// allows, always with the same key.
func callProvider[In, Out any](ctx context.Context, x *Executor, e *Effect[In, Out], key Key, in In) (out Out, calls int, err error) {
	pol := x.cfg.Retry
	if e.Retry != nil {
		pol = *e.Retry
	}
	pol = pol.withDefaults()
	backoff := pol.InitialBackoff
	for {
		calls++
		out, err = e.Call(ctx, key, in)
		if err == nil || calls >= pol.MaxAttempts || ctx.Err() != nil {
			return out, calls, err
		}
		class, after := Classify(err)
		if class != ClassRetryable && class != ClassUnknown {
			return out, calls, err
		}
		if after > pol.MaxBackoff {
			// The provider asks for longer than we hold claims for in-run
			// waits: release and let the next run (or sweep) retry.
			return out, calls, err
		}
		if x.sleep(ctx, max(backoff, after)) != nil {
			return out, calls, err // cancelled while waiting: report the last failure
		}
		backoff = min(backoff*2, pol.MaxBackoff)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (x *Executor) report(ctx context.Context, effect string, key Key, o Outcome, calls int, err error, d time.Duration) {
	if x.cfg.OnOutcome != nil {
		x.cfg.OnOutcome(ctx, Event{Effect: effect, Namespace: key.Namespace(), Key: key, Outcome: o, Calls: calls, Err: err, Duration: d})
	}
	if x.logger == nil {
		return
	}
	level := slog.LevelDebug
	switch o {
	case OutcomeInFlight, OutcomeSkipped:
		level = slog.LevelInfo
	case OutcomeApplied, OutcomeAlreadyApplied:
	default:
		level = slog.LevelWarn
	}
	if !x.logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("effect", effect),
		slog.String("namespace", key.Namespace()),
		slog.Any("key", key),
		slog.String("outcome", o.String()),
		slog.Int("calls", calls),
		slog.Duration("duration", d),
	}
	if err != nil {
		msg := err.Error()
		if key.HMAC() {
			msg = redact(msg, key.String())
		}
		attrs = append(attrs, slog.String("error", msg))
	}
	x.logger.LogAttrs(ctx, level, "idempotency: effect run", attrs...)
}

// redact removes every occurrence of key from s.
func redact(s, key string) string {
	if key == "" {
		return s
	}
	return strings.ReplaceAll(s, key, "<key>")
}
