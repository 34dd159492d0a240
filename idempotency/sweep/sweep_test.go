package sweep_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/clocktest"
	"github.com/effectonce/effectonce/idempotency/sweep"
)

func memStore() *idempotency.MemStore { return idempotency.NewMemStore(nil) }

func TestRunPreflightMakesOneLookupPerBatchAndCallsOnlyForNewWork(t *testing.T) {
	t.Parallel()
	preflightScenario(t, memStore(), nil)
}

func TestRunCancelLeavesEveryKeyAppliedOrReleased(t *testing.T) {
	t.Parallel()
	rep := cancelScenario(t, memStore(), 2_000, 130)
	t.Logf("%s", rep)
}

func TestRunDuplicatesWithinABatchCallOnce(t *testing.T) {
	t.Parallel()
	p := newProvider()
	a, b := promos(0, 1)[0], promos(1, 2)[0]
	items := []promo{a, a, b, a, b, a}
	rep, err := sweep.Run(context.Background(), newExecutor(t, memStore()), p.effect(), sweep.Slice(items), &sweep.Config{Concurrency: 4})
	require.NoError(t, err)
	requireAccounted(t, rep)
	calls, created := p.stats()
	require.Equal(t, 2, calls, "one provider call per distinct key")
	require.Equal(t, 2, created)
	require.Equal(t, 2, rep.ProviderCalls)
	require.Equal(t, 2, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 4, rep.Outcomes[idempotency.OutcomeAlreadyApplied]+rep.Outcomes[idempotency.OutcomeInFlight])
	require.Equal(t, 1, rep.Lookups)
	require.Empty(t, rep.Failures, "a duplicate in flight is not a failure")
}

func TestRunReportsBadCandidateAndGoesOn(t *testing.T) {
	t.Parallel()
	p := newProvider()
	items := promos(0, 5)
	items[2].User = "" // the key builder rejects empty parts
	rep, err := sweep.Run(context.Background(), newExecutor(t, memStore()), p.effect(), sweep.Slice(items), nil)
	require.NoError(t, err, "a bad candidate is not fatal")
	requireAccounted(t, rep)
	require.Equal(t, 1, rep.Invalid)
	require.Equal(t, 4, rep.Outcomes[idempotency.OutcomeApplied])
	require.Len(t, rep.Failures, 1)
	f := rep.Failures[0]
	require.Equal(t, 2, f.Index)
	require.Zero(t, f.Outcome, "never run")
	require.True(t, f.Key.IsZero())
	require.ErrorIs(t, f.Err, idempotency.ErrEmptyPart)
	require.ErrorIs(t, f.Err, idempotency.ErrInvalidKey)
	require.Contains(t, f.String(), "#2 <no key> invalid:")
	calls, _ := p.stats()
	require.Equal(t, 4, calls)
}

func TestRunPreflightReportsMismatchWithoutClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := memStore()
	p := newProvider()
	items := promos(0, 3)
	_, err := sweep.Run(ctx, newExecutor(t, base), p.effect(), sweep.Slice(items), nil)
	require.NoError(t, err)

	counting := &countingStore{Store: base}
	items[1].Percent = 50 // same intent, another payload
	rep, err := sweep.Run(ctx, newExecutor(t, counting), p.effect(), sweep.Slice(items), nil)
	require.NoError(t, err)
	requireAccounted(t, rep)
	require.Zero(t, counting.claims.Load(), "the pre-flight settles all three")
	require.Equal(t, 3, rep.SavedByPreflight)
	require.Equal(t, 2, rep.Outcomes[idempotency.OutcomeAlreadyApplied])
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeMismatch])
	require.Len(t, rep.Failures, 1)
	require.Equal(t, 1, rep.Failures[0].Index)
	var me *idempotency.MismatchError
	require.ErrorAs(t, rep.Failures[0].Err, &me)
	require.Equal(t, idempotency.StateApplied, me.Stored.State)
	calls, _ := p.stats()
	require.Equal(t, 3, calls, "the second sweep made no call")
}

func TestRunProgressFiresPerBatchWithCumulativeCounts(t *testing.T) {
	t.Parallel()
	var got []sweep.Progress
	cfg := &sweep.Config{BatchSize: 10, OnProgress: func(p sweep.Progress) { got = append(got, p) }}
	items := promos(0, 25)
	items[13].Sub = ""
	rep, err := sweep.Run(context.Background(), newExecutor(t, memStore()), newProvider().effect(), sweep.Slice(items), cfg)
	require.NoError(t, err)
	require.Len(t, got, 3)
	for i, want := range []int{10, 20, 25} {
		require.Equal(t, i+1, got[i].Batches)
		require.Equal(t, want, got[i].Candidates)
		require.Equal(t, want, got[i].ProviderCalls+got[i].Invalid)
		require.Equal(t, i+1, got[i].Lookups)
	}
	require.Empty(t, got[0].Failures)
	require.Len(t, got[1].Failures, 1)
	require.Equal(t, rep, got[2].Report, "the last progress is the report")
}

func TestRunFailuresAreNotFatal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := memStore()
	x := newExecutor(t, store)
	p := newProvider()
	p.before = func(_ context.Context, _ int, in promo) error {
		switch in.User {
		case "u_1":
			return idempotency.Permanent(errors.New("customer deleted"))
		case "u_2":
			return idempotency.NotActed(errors.New("429"), 0)
		}
		return nil
	}
	eff := p.effect()
	items := promos(0, 6)

	// Another worker holds a live claim on u_4: in flight, not a failure.
	k4, fp4, err := eff.Identity(items[4])
	require.NoError(t, err)
	_, err = store.Claim(ctx, idempotency.ClaimRequest{Key: k4.String(), Namespace: k4.Namespace(), Fingerprint: fp4, Lease: time.Hour})
	require.NoError(t, err)

	rep, err := sweep.Run(ctx, x, eff, sweep.Slice(items), &sweep.Config{Concurrency: 3})
	require.NoError(t, err)
	requireAccounted(t, rep)
	require.Equal(t, map[idempotency.Outcome]int{
		idempotency.OutcomeApplied:   3,
		idempotency.OutcomePermanent: 1,
		idempotency.OutcomeRetryable: 1,
		idempotency.OutcomeInFlight:  1,
	}, rep.Outcomes)
	require.Len(t, rep.Failures, 2)
	require.Equal(t, 1, rep.Failures[0].Index, "failures sorted by index")
	require.ErrorIs(t, rep.Failures[0].Err, idempotency.ErrPermanent)
	require.Equal(t, 2, rep.Failures[1].Index)
	require.ErrorIs(t, rep.Failures[1].Err, idempotency.ErrRetryable)
	require.Equal(t, 5, rep.ProviderCalls)
}

// limiterDeadline is the sweeps' deadline in the limiter tests: far beyond
// any work a loaded machine must do before it, and short of the hour the
// limiters below take to grant a token past their burst, so that a wait for
// such a token is refused at once.
const limiterDeadline = 30 * time.Minute

// The limiter grants a burst of 5 and then one call an hour: within the
// context's deadline, exactly 5 calls can happen, whatever the machine's
// speed, and the sweep stops instead of churning through claims.
func TestRunLimiterCapsProviderCalls(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), limiterDeadline)
	defer cancel()
	store := memStore()
	p := newProvider()
	eff := p.effect()
	items := promos(0, 200)
	lim := rate.NewLimiter(rate.Every(time.Hour), 5)

	rep, err := sweep.Run(ctx, newExecutor(t, store), eff, sweep.Slice(items), &sweep.Config{BatchSize: 50, Concurrency: 4, Limiter: lim})
	require.NoError(t, ctx.Err(), "a refused wait fails at once, it does not sleep to the deadline")
	require.ErrorIs(t, err, context.DeadlineExceeded, "the limiter cannot serve before the deadline")
	require.Contains(t, err.Error(), "rate limiter")
	requireAccounted(t, rep)

	calls, _ := p.stats()
	require.Equal(t, 5, calls)
	require.Equal(t, 5, rep.ProviderCalls)
	require.Equal(t, 5, rep.Outcomes[idempotency.OutcomeApplied])
	require.Positive(t, rep.Unstarted)
	requireAppliedOrReleased(t, store, eff, items)
}

// Tokens are spent on provider calls only: 100 candidates already applied
// and 5 new ones need 5 tokens, which the burst holds.
func TestRunLimiterSpendsTokensOnProviderCallsOnly(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), limiterDeadline)
	defer cancel()
	store := memStore()
	items := promos(0, 105)
	_, err := sweep.Run(ctx, newExecutor(t, store), newProvider().effect(), sweep.Slice(items[:100]), nil)
	require.NoError(t, err)

	p := newProvider()
	lim := rate.NewLimiter(rate.Every(time.Hour), 5)
	rep, err := sweep.Run(ctx, newExecutor(t, store), p.effect(), sweep.Slice(items), &sweep.Config{BatchSize: 20, Limiter: lim})
	require.NoError(t, err)
	require.Equal(t, 5, rep.Outcomes[idempotency.OutcomeApplied])
	require.Equal(t, 100, rep.Outcomes[idempotency.OutcomeAlreadyApplied])
	calls, _ := p.stats()
	require.Equal(t, 5, calls)
}

// Over a real interval the number of calls stays within what the limiter
// can grant in the time measured: burst + elapsed*rate. Only an upper bound
// is asserted, so a slow machine cannot make it fail.
func TestRunLimiterRateHoldsOverTime(t *testing.T) {
	t.Parallel()
	const (
		interval = 4 * time.Millisecond
		burst    = 3
	)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	var (
		mu       sync.Mutex
		arrivals []time.Time
	)
	p := newProvider()
	p.before = func(context.Context, int, promo) error {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		return nil
	}
	start := time.Now() // before the limiter exists: it cannot grant earlier
	lim := rate.NewLimiter(rate.Every(interval), burst)
	rep, err := sweep.Run(ctx, newExecutor(t, memStore()), p.effect(), sweep.Slice(promos(0, 10_000)), &sweep.Config{Concurrency: 16, Limiter: lim})
	elapsed := time.Since(start)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	requireAccounted(t, rep)

	mu.Lock()
	defer mu.Unlock()
	allowed := burst + int(elapsed/interval) + 1
	require.LessOrEqual(t, len(arrivals), allowed, "calls in %v", elapsed)
	require.Equal(t, len(arrivals), rep.ProviderCalls)
	for _, at := range arrivals {
		require.False(t, at.Before(start))
	}
	t.Logf("%d calls in %v (bound %d)", len(arrivals), elapsed, allowed)
}

type failingLookup struct{ idempotency.Store }

func (failingLookup) Lookup(context.Context, []string) (map[string]idempotency.Record, error) {
	return nil, errors.New("connection reset")
}

func TestRunStopsWhenLookupFails(t *testing.T) {
	t.Parallel()
	p := newProvider()
	rep, err := sweep.Run(context.Background(), newExecutor(t, failingLookup{memStore()}), p.effect(), sweep.Slice(promos(0, 30)), &sweep.Config{BatchSize: 10})
	require.ErrorContains(t, err, "connection reset")
	require.ErrorContains(t, err, "lookup")
	requireAccounted(t, rep)
	require.Equal(t, 10, rep.Candidates, "no batch after the failed one")
	require.Equal(t, 10, rep.Unstarted)
	calls, _ := p.stats()
	require.Zero(t, calls)
}

func TestRunSourceErrorKeepsCandidatesTaken(t *testing.T) {
	t.Parallel()
	pages := map[string][]promo{"": promos(0, 7), "p2": promos(7, 14)}
	next := map[string]string{"": "p2", "p2": "p3"}
	src := sweep.Pages(func(_ context.Context, cursor string) ([]promo, string, error) {
		if cursor == "p3" {
			return nil, "", errors.New("replica gone")
		}
		return pages[cursor], next[cursor], nil
	})
	rep, err := sweep.Run(context.Background(), newExecutor(t, memStore()), newProvider().effect(), src, &sweep.Config{BatchSize: 5})
	require.ErrorContains(t, err, "replica gone")
	require.ErrorContains(t, err, "source")
	requireAccounted(t, rep)
	require.Equal(t, 14, rep.Outcomes[idempotency.OutcomeApplied], "the short last batch is swept too")
	require.Equal(t, 3, rep.Batches)
}

func TestPagesFollowsTheCursorToTheEnd(t *testing.T) {
	t.Parallel()
	var cursors []string
	src := sweep.Pages(func(_ context.Context, cursor string) ([]int, string, error) {
		cursors = append(cursors, cursor)
		switch cursor {
		case "":
			return []int{1, 2}, "after:2", nil
		case "after:2":
			return nil, "after:2b", nil // an empty page is fine
		default:
			return []int{3}, "", nil
		}
	})
	var got []int
	err := src(context.Background(), func(items []int) error { got = append(got, items...); return nil })
	require.NoError(t, err)
	require.Equal(t, []int{1, 2, 3}, got)
	require.Equal(t, []string{"", "after:2", "after:2b"}, cursors)

	stuck := sweep.Pages(func(context.Context, string) ([]int, string, error) { return []int{1}, "same", nil })
	err = stuck(context.Background(), func([]int) error { return nil })
	require.ErrorContains(t, err, "next cursor equals")
}

func TestRunRejectsInvalidConfigUpFront(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	x := newExecutor(t, memStore())
	eff := newProvider().effect()
	src := sweep.Slice(promos(0, 1))
	for name, cfg := range map[string]*sweep.Config{
		"NegativeBatch":       {BatchSize: -1},
		"NegativeConcurrency": {Concurrency: -1},
		"ZeroBurstLimiter":    {Limiter: rate.NewLimiter(10, 0)},
	} {
		_, err := sweep.Run(ctx, x, eff, src, cfg)
		require.ErrorIs(t, err, sweep.ErrInvalidConfig, name)
	}
	noCall := *eff
	noCall.Call = nil
	_, err := sweep.Run(ctx, x, &noCall, src, nil)
	require.ErrorIs(t, err, idempotency.ErrInvalidEffect)
	_, err = sweep.Run[promo, string](ctx, nil, eff, src, nil)
	require.ErrorIs(t, err, idempotency.ErrInvalidEffect)
	_, err = sweep.Run(ctx, x, eff, nil, nil)
	require.ErrorIs(t, err, sweep.ErrInvalidConfig)
}

func TestFailureStringHidesHMACKey(t *testing.T) {
	t.Parallel()
	ks := idempotency.KeySpace{Namespace: "mail.notice", Secret: []byte("s3cret")}
	key := ks.MustKey(idempotency.Str("email", "alice@example.com"))
	f := sweep.Failure{Index: 7, Key: key, Outcome: idempotency.OutcomePermanent, Err: errors.New("rejected key " + key.String())}
	s := f.String()
	require.NotContains(t, s, key.String())
	require.Equal(t, "#7 mail.notice:<hmac> permanent: rejected key <key>", s)
}

func TestRunSweepsWithTheStoreClock(t *testing.T) {
	t.Parallel()
	// A claim left by a crashed worker, expired under the store's clock,
	// is parked by the default policy: the sweep reports it for
	// reconciliation and makes no call.
	clock := clocktest.New()
	store := idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: clock.Now})
	p := newProvider()
	eff := p.effect()
	items := promos(0, 3)
	k, fp, err := eff.Identity(items[0])
	require.NoError(t, err)
	_, err = store.Claim(context.Background(), idempotency.ClaimRequest{Key: k.String(), Namespace: k.Namespace(), Fingerprint: fp, Lease: time.Minute})
	require.NoError(t, err)
	clock.Advance(time.Hour)

	rep, err := sweep.Run(context.Background(), newExecutor(t, store), eff, sweep.Slice(items), nil)
	require.NoError(t, err)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeNeedsReconciliation])
	require.Equal(t, 2, rep.Outcomes[idempotency.OutcomeApplied])
	require.Len(t, rep.Failures, 1)
	require.ErrorIs(t, rep.Failures[0].Err, idempotency.ErrNeedsReconciliation)
	require.True(t, strings.HasPrefix(rep.Failures[0].String(), "#0 loyalty.promo:v1:user=u_0"))
	calls, _ := p.stats()
	require.Equal(t, 2, calls)
}

// TestRunRemembersRefusals: a credit in the wrong currency is refused on
// night 1; nights 2 and 3 send nothing; the corrected payload is sent at
// once.
func TestRunRemembersRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := clocktest.New()
	store := idempotency.NewMemStore(&idempotency.MemStoreConfig{Now: clock.Now})
	x, err := idempotency.NewExecutor(store, &idempotency.Config{Now: clock.Now})
	require.NoError(t, err)
	p := newProvider()
	p.before = func(_ context.Context, _ int, in promo) error {
		if in.Percent == 10 {
			return idempotency.Permanent(errors.New("invalid_request_error: currency mismatch"))
		}
		return nil
	}
	eff := p.effect()
	eff.RememberRefusal = 7 * 24 * time.Hour
	night := func(in promo, cfg *sweep.Config) sweep.Report {
		rep, err := sweep.Run(ctx, x, eff, sweep.Slice([]promo{in}), cfg)
		require.NoError(t, err)
		requireAccounted(t, rep)
		clock.Advance(24 * time.Hour)
		return rep
	}
	wrong := promos(0, 1)[0]
	wrong.Percent = 10
	rep := night(wrong, nil)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomePermanent])
	require.Len(t, rep.Failures, 1)
	for range 2 {
		rep = night(wrong, nil)
		require.Equal(t, 1, rep.RefusalsRemembered)
		require.Equal(t, 1, rep.SavedByPreflight)
		require.Zero(t, rep.ProviderCalls)
		require.Empty(t, rep.Failures, "the refusal was reported the first night")
	}
	calls, _ := p.stats()
	require.Equal(t, 1, calls, "three nights, one refused call")

	rep = night(wrong, &sweep.Config{RetryRefused: true})
	require.Equal(t, 1, rep.ProviderCalls, "RetryRefused sends it anyway")

	fixed := wrong
	fixed.Percent = 15
	rep = night(fixed, nil)
	require.Equal(t, 1, rep.Outcomes[idempotency.OutcomeApplied], "a corrected payload is sent at once")
	calls, created := p.stats()
	require.Equal(t, 3, calls)
	require.Equal(t, 1, created)
}
