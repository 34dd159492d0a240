package sweep

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/effectonce/effectonce/idempotency"
)

// ErrInvalidConfig is returned by Run for a Config it cannot use, before
// the Source is read.
var ErrInvalidConfig = errors.New("sweep: invalid config")

// Default values of Config's fields.
const (
	DefaultBatchSize   = 500
	DefaultConcurrency = 8
	DefaultFlushDelay  = 50 * time.Millisecond
)

// Config configures a sweep. The zero value (or nil) is ready to use.
type Config struct {
	// BatchSize is the number of candidates pre-flighted with one
	// Store.Lookup. Zero means DefaultBatchSize (500).
	BatchSize int

	// Concurrency is the number of runs doing their provider work at once.
	// With a store that claims in batches, a run gives its place to the
	// next one as soon as it hands over its last change, while that change
	// waits to be written with others. Zero means DefaultConcurrency (8).
	Concurrency int

	// FlushDelay bounds how long a run's change (a completion, a release)
	// waits for others before their group is written, with a store that
	// claims in batches. A group is written sooner when it holds BatchSize
	// changes, or when no other run of the batch can add one (every run
	// left waits for its own); and never later than a quarter of the
	// effect's lease. A process killed meanwhile loses those changes: their
	// claims expire under their leases, as after any crash. Zero means
	// DefaultFlushDelay (50 ms).
	FlushDelay time.Duration

	// After returns a channel that fires once d has passed, for FlushDelay.
	// Nil means time.After. Tests pass one that never fires, or that they
	// fire by hand.
	After func(d time.Duration) <-chan time.Time

	// Limiter, when set, limits provider calls: each call, in-run retries
	// included, waits for a token. Claims, lookups and candidates settled
	// without a call consume none. Set it below the provider's limit,
	// leaving room for the rest of the service: Stripe allows about 100
	// requests per second in live mode and 25 in test mode, per account.
	//
	// The wait happens while the run holds its claim, so keep the effect's
	// lease well above Concurrency divided by the rate. When the limiter
	// cannot grant a token before the context's deadline, the sweep stops
	// taking candidates and Run returns an error wrapping
	// context.DeadlineExceeded. Nil means unlimited.
	Limiter *rate.Limiter

	// RetryRefused sends candidates whose last record was refused with the
	// same payload even within the effect's RememberRefusal. The default
	// (false) skips them without a claim or a provider call, and counts
	// them in Report.RefusalsRemembered.
	RetryRefused bool

	// OnProgress, when set, is called after each batch with the cumulative
	// counts. Calls never overlap: they come from the goroutine the Source
	// yields from, between batches.
	OnProgress func(Progress)
}

func (c *Config) withDefaults() (Config, error) {
	var cfg Config
	if c != nil {
		cfg = *c
	}
	switch {
	case cfg.BatchSize < 0:
		return cfg, fmt.Errorf("%w: negative BatchSize %d", ErrInvalidConfig, cfg.BatchSize)
	case cfg.Concurrency < 0:
		return cfg, fmt.Errorf("%w: negative Concurrency %d", ErrInvalidConfig, cfg.Concurrency)
	case cfg.FlushDelay < 0:
		return cfg, fmt.Errorf("%w: negative FlushDelay %v", ErrInvalidConfig, cfg.FlushDelay)
	case cfg.Limiter != nil && cfg.Limiter.Limit() != rate.Inf && cfg.Limiter.Burst() < 1:
		return cfg, fmt.Errorf("%w: Limiter has a burst of %d and would never grant a call", ErrInvalidConfig, cfg.Limiter.Burst())
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.FlushDelay == 0 {
		cfg.FlushDelay = DefaultFlushDelay
	}
	return cfg, nil
}

// Run sweeps the candidates of src through effect e, batch by batch:
//
//  1. Keys and fingerprints are computed for the batch (Effect.Identity). A
//     candidate whose key or fingerprint cannot be computed is counted as
//     Invalid and listed in Failures; the sweep goes on.
//  2. One Store.Lookup pre-flights the whole batch, and the claim rule is
//     applied to what it returns on the executor's clock
//     (idempotency.Preflight): a candidate already applied or skipped,
//     held elsewhere under a live lease, not yet due, or held with another
//     fingerprint is counted without a claim or a provider call. (A clock
//     that disagrees with the store's can only defer these to the next
//     sweep; the claim, on the store's clock, decides everything else.)
//  3. Every other candidate is claimed and run. With a store that claims
//     in batches (idempotency.BatchStore, as both stores of this module
//     do), one ClaimMany claims them all; each is then run from its claim
//     (idempotency.RunClaimed), at most Config.Concurrency doing provider
//     work at once, and their completions (releases, failures, parks) are
//     written in groups (Config.FlushDelay): a batch of 500 fresh
//     candidates costs three statements, not a thousand and one. A claim
//     that waits half its lease for its turn is extended, with the others
//     still waiting, in one statement. With other stores each candidate
//     goes through idempotency.Run. Either way the claim, not the
//     pre-flight, is the guard: a duplicate within a batch, or another
//     worker sweeping the same candidates, ends in AlreadyApplied or
//     InFlight, never in a second provider call; and every decision after
//     an attempt is the executor's.
//  4. Config.OnProgress gets the cumulative counts.
//
// Batches run one after the other. A failed run is not fatal: it is counted
// and listed in Report.Failures.
//
// The rate limit and the cancellation check run as executor middleware
// around each attempt (idempotency.Middleware), before the attempt is
// marked as started: a run whose attempt never started releases its key at
// once, and a worker killed while waiting for a token leaves a key the next
// run takes over.
//
// Run stops early only when ctx is done, the Limiter cannot grant a call
// before ctx's deadline, a Lookup fails or src fails. It then takes no
// further candidate, waits for the runs in flight and returns the partial
// report with the error. A run in flight is never torn: its store
// statements do not see ctx's cancellation, a provider call not yet
// started is not started (the claim is released, the outcome retryable),
// and a provider call under way gets ctx and ends as its error is
// classified. So every key the sweep claimed ends applied, skipped,
// failed, released or unknown for the next sweep, or in doubt; none stays
// held under a live lease. Candidates taken but never run are counted as
// Unstarted (a batch claim taken for them is released at once). With
// in-run retries (RetryPolicy), a cancelled run still waits out its
// backoff before giving up.
//
// A process killed mid-sweep leaves each key applied, free, or pending
// under a lease that expires, never called twice: with batch claims, the
// keys claimed and not yet called, and those whose completion was waiting
// for its group, are up to a batch. Once their leases expire, effects whose
// provider deduplicates (ExpiredRetry) retry them under the same key, and
// the others take the uncalled ones over: a batch of an ExpiredPark or
// ExpiredRetryUncalled effect is claimed as "nothing sent", and each run
// records the start of its call (for ExpiredPark, one statement per call
// that a batch of ExpiredRetry effects does not pay). Only calls under way
// at the crash, and completions not yet written, are in doubt, for Find
// or an operator.
func Run[In, Out any](ctx context.Context, x *idempotency.Executor, e *idempotency.Effect[In, Out], src Source[In], cfg *Config) (Report, error) {
	rep := Report{Outcomes: map[idempotency.Outcome]int{}}
	c, err := cfg.withDefaults()
	if err != nil {
		return rep, err
	}
	if err := validate(x, e, src); err != nil {
		return rep, err
	}
	s := &sweeper[In, Out]{store: x.Store(), eff: e, cfg: c, rep: rep}
	s.x = x.WithMiddleware(s.middleware(ctx))

	buf := make([]In, 0, c.BatchSize)
	srcErr := src(ctx, func(items []In) error {
		for len(items) > 0 {
			if err := s.stopErr(ctx); err != nil {
				return err
			}
			n := min(len(items), c.BatchSize-len(buf))
			buf = append(buf, items[:n]...)
			items = items[n:]
			if len(buf) == c.BatchSize {
				err := s.batch(ctx, buf)
				clear(buf) // drop references to processed inputs
				buf = buf[:0]
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	// The last, short batch. Candidates taken before a source error are
	// still swept; after a stop they are only counted.
	if len(buf) > 0 {
		if s.stopErr(ctx) == nil {
			_ = s.batch(ctx, buf)
		} else {
			s.mu.Lock()
			s.rep.Candidates += len(buf)
			s.rep.Unstarted += len(buf)
			s.next += len(buf)
			s.mu.Unlock()
		}
	}
	return s.finish(ctx, srcErr)
}

// validate checks what Effect.Identity would otherwise report for every
// candidate, so a misconfigured effect fails the sweep once, up front.
func validate[In, Out any](x *idempotency.Executor, e *idempotency.Effect[In, Out], src Source[In]) error {
	switch {
	case x == nil:
		return fmt.Errorf("%w: sweep: nil executor", idempotency.ErrInvalidEffect)
	case e.Validate() != nil:
		return fmt.Errorf("sweep: %w", e.Validate())
	case src == nil:
		return fmt.Errorf("%w: nil source", ErrInvalidConfig)
	}
	return nil
}

type sweeper[In, Out any] struct {
	x     *idempotency.Executor // the caller's, with the sweep's middleware
	store idempotency.Store
	eff   *idempotency.Effect[In, Out]
	cfg   Config
	calls atomic.Int64 // provider calls really made

	// stopped is set once the sweep must take no further candidate for a
	// reason other than ctx: the limiter ran out of time, or a lookup
	// failed. stopCause (under mu) says why.
	stopped atomic.Bool

	mu        sync.Mutex
	rep       Report
	stopCause error
	next      int // Index of the next candidate taken
}

// middleware refuses to start an attempt once the sweep is cancelled and
// waits for the limiter, both before the attempt is marked as started.
func (s *sweeper[In, Out]) middleware(ctx context.Context) idempotency.Middleware {
	lim := s.cfg.Limiter
	return func(callCtx context.Context, a idempotency.AttemptInfo, next func(context.Context) error) error {
		if err := ctx.Err(); err != nil {
			return idempotency.NotActed(fmt.Errorf("sweep: cancelled before the call: %w", err), 0)
		}
		if s.stopped.Load() {
			return idempotency.NotActed(errStopped, 0)
		}
		if lim != nil {
			if err := lim.Wait(ctx); err != nil {
				if ctx.Err() == nil {
					// Not cancelled: no token before the deadline. Stop
					// the sweep rather than churn through claims.
					s.stop(fmt.Errorf("sweep: stopped: rate limiter has no token before the deadline (%v): %w", err, context.DeadlineExceeded))
				}
				return idempotency.NotActed(fmt.Errorf("sweep: rate limiter: %w", err), 0)
			}
		}
		return next(callCtx)
	}
}

// stop makes the sweep take no further candidate; the first cause wins.
func (s *sweeper[In, Out]) stop(cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopCause == nil {
		s.stopCause = cause
	}
	s.stopped.Store(true)
}

// stopErr returns why no further candidate may start, or nil.
func (s *sweeper[In, Out]) stopErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !s.stopped.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopCause
}

type candidate[In any] struct {
	index int
	in    In
	key   idempotency.Key
	fp    []byte
}

// batch pre-flights and runs one batch. It returns an error only when the
// sweep must stop.
func (s *sweeper[In, Out]) batch(ctx context.Context, items []In) error {
	s.mu.Lock()
	base := s.next
	s.next += len(items)
	s.rep.Candidates += len(items)
	s.rep.Batches++
	firstFailure := len(s.rep.Failures)
	s.mu.Unlock()

	// 1. Identity of every candidate; duplicate keys looked up once.
	valid := make([]candidate[In], 0, len(items))
	keys := make([]string, 0, len(items))
	seen := make(map[string]struct{}, len(items))
	for i, in := range items {
		key, fp, err := s.eff.Identity(in)
		if err != nil {
			s.record(Failure{Index: base + i, Err: err})
			continue
		}
		valid = append(valid, candidate[In]{index: base + i, in: in, key: key, fp: fp})
		if _, dup := seen[key.String()]; !dup {
			seen[key.String()] = struct{}{}
			keys = append(keys, key.String())
		}
	}

	// 2. One pre-flight lookup for the batch.
	var active map[string]idempotency.Record
	if len(keys) > 0 {
		if err := s.stopErr(ctx); err != nil {
			s.unstarted(len(valid))
			return s.done(firstFailure, err)
		}
		s.mu.Lock()
		s.rep.Lookups++
		s.mu.Unlock()
		var err error
		active, err = s.store.Lookup(ctx, keys)
		if err != nil {
			s.unstarted(len(valid))
			if ctx.Err() != nil {
				return s.done(firstFailure, ctx.Err())
			}
			s.stop(fmt.Errorf("sweep: %s: lookup of %d keys: %w", s.eff.Name, len(keys), err))
			return s.done(firstFailure, s.stopErr(ctx))
		}
	}

	// 2b. Refusals remembered: candidates with no active record whose last
	// record was refused with the same payload (Effect.RememberRefusal).
	refused, err := s.refusals(ctx, valid, active)
	if err != nil {
		s.unstarted(len(valid))
		if ctx.Err() != nil {
			return s.done(firstFailure, ctx.Err())
		}
		s.stop(fmt.Errorf("sweep: %s: refusals of %d keys: %w", s.eff.Name, len(valid), err))
		return s.done(firstFailure, s.stopErr(ctx))
	}

	// 3. Settle what the pre-flight can; run the rest: claimed in one
	// statement when the store can, else one by one by idempotency.Run.
	if bs, ok := s.store.(idempotency.BatchStore); ok {
		var todo []candidate[In]
		for _, c := range valid {
			if s.settled(c, active, refused) {
				continue
			}
			todo = append(todo, c)
		}
		s.claimed(ctx, bs, todo)
		return s.done(firstFailure, s.stopErr(ctx))
	}
	var g errgroup.Group
	g.SetLimit(s.cfg.Concurrency)
	for _, c := range valid {
		if s.settled(c, active, refused) {
			continue
		}
		if s.stopErr(ctx) != nil {
			s.unstarted(1)
			continue
		}
		g.Go(func() error {
			// Checked again: Go may have waited for a slot.
			if s.stopErr(ctx) != nil {
				s.unstarted(1)
				return nil
			}
			res, err := idempotency.Run(ctx, s.x, s.eff, c.in)
			s.calls.Add(int64(res.Calls))
			if res.Reconciled {
				s.mu.Lock()
				s.rep.Reconciled++
				s.mu.Unlock()
			}
			key := res.Key
			if key.IsZero() {
				key = c.key
			}
			s.record(Failure{Index: c.index, Key: key, Outcome: res.Outcome, Err: err})
			return nil
		})
	}
	_ = g.Wait() // the goroutines never return an error
	return s.done(firstFailure, s.stopErr(ctx))
}

// settled counts a candidate the pre-flight settles on its own (an active
// record the claim would not acquire, a refusal remembered) and reports
// whether it did.
func (s *sweeper[In, Out]) settled(c candidate[In], active, refused map[string]idempotency.Record) bool {
	if rec, ok := active[c.key.String()]; ok {
		o, err := preflight(s.x, s.eff, rec, c.fp)
		if o == 0 {
			return false
		}
		s.preflighted(Failure{Index: c.index, Key: c.key, Outcome: o, Err: err})
		return true
	}
	if rec, ok := refused[c.key.String()]; ok && rec.FingerprintMatches(c.fp) {
		s.mu.Lock()
		s.rep.Outcomes[idempotency.OutcomePermanent]++
		s.rep.SavedByPreflight++
		s.rep.RefusalsRemembered++
		s.mu.Unlock()
		return true
	}
	return false
}

// refusals returns the last refusals, within the effect's RememberRefusal,
// of the valid candidates that have no active record: one lookup, only for
// effects that remember refusals and stores that can tell.
func (s *sweeper[In, Out]) refusals(ctx context.Context, valid []candidate[In], active map[string]idempotency.Record) (map[string]idempotency.Record, error) {
	rl, ok := s.store.(idempotency.RefusalLookup)
	if !ok || s.eff.RememberRefusal <= 0 || s.cfg.RetryRefused {
		return nil, nil
	}
	var keys []string
	seen := map[string]bool{}
	for _, c := range valid {
		k := c.key.String()
		if _, ok := active[k]; !ok && !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	s.mu.Lock()
	s.rep.Lookups++
	s.mu.Unlock()
	return rl.LastRefusals(ctx, keys, s.x.Now().Add(-s.eff.RememberRefusal))
}

// preflight settles a candidate from its active record when the claim rule
// would not hold it: the outcome Run would report, and its error. A zero
// outcome leaves the candidate to the claim.
func preflight[In, Out any](x *idempotency.Executor, e *idempotency.Effect[In, Out], rec idempotency.Record, fp []byte) (idempotency.Outcome, error) {
	switch idempotency.Preflight(x, e, rec, fp) {
	case idempotency.VerdictDone:
		return idempotency.OutcomeAlreadyApplied, nil
	case idempotency.VerdictMismatch:
		return idempotency.OutcomeMismatch, &idempotency.MismatchError{Key: rec.Key, Stored: rec}
	case idempotency.VerdictInFlight:
		return idempotency.OutcomeInFlight, nil
	case idempotency.VerdictNotDue:
		return idempotency.OutcomeNotDue, fmt.Errorf("sweep: %s: %w (record %s)", e.Name, idempotency.ErrNotDue, rec.State)
	}
	// In doubt is left to the claim: the pre-flight decides on the
	// executor's clock, and one running ahead of the store's would report
	// a live claim as needing an operator. The verdicts settled above can
	// only be wrong by waiting one more sweep.
	return 0, nil
}

// record counts one candidate's outcome; f.Outcome zero means invalid.
func (s *sweeper[In, Out]) record(f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.Outcome == 0 {
		s.rep.Invalid++
	} else {
		s.rep.Outcomes[f.Outcome]++
	}
	if f.Outcome == 0 || (!f.Outcome.Good() && f.Outcome != idempotency.OutcomeInFlight && f.Outcome != idempotency.OutcomeNotDue) {
		s.rep.Failures = append(s.rep.Failures, f)
	}
}

func (s *sweeper[In, Out]) preflighted(f Failure) {
	s.record(f)
	s.mu.Lock()
	s.rep.SavedByPreflight++
	s.mu.Unlock()
}

func (s *sweeper[In, Out]) unstarted(n int) {
	s.mu.Lock()
	s.rep.Unstarted += n
	s.mu.Unlock()
}

// done closes a batch: failures sorted by index, calls counted, progress
// reported. It passes err through.
func (s *sweeper[In, Out]) done(firstFailure int, err error) error {
	s.mu.Lock()
	slices.SortFunc(s.rep.Failures[firstFailure:], func(a, b Failure) int { return a.Index - b.Index })
	s.rep.ProviderCalls = int(s.calls.Load())
	snap := s.rep.snapshot()
	s.mu.Unlock()
	if s.cfg.OnProgress != nil {
		s.cfg.OnProgress(Progress{Report: snap})
	}
	return err
}

// finish returns the report and why the sweep stopped, if it did.
func (s *sweeper[In, Out]) finish(ctx context.Context, srcErr error) (Report, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rep.ProviderCalls = int(s.calls.Load())
	rep := s.rep.snapshot()
	switch {
	case ctx.Err() != nil:
		return rep, ctx.Err()
	case s.stopCause != nil:
		return rep, s.stopCause
	case srcErr != nil:
		return rep, fmt.Errorf("sweep: %s: source: %w", s.eff.Name, srcErr)
	}
	return rep, nil
}
