package sweep

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/internal/group"
)

// errStopped is the cause of an attempt the sweep refused because it had
// stopped (or was cancelled) before the attempt started.
var errStopped = errors.New("sweep: stopped before the call")

// claimed runs the candidates left after the pre-flight through a store
// that claims in batches: one ClaimMany for all of them, then each run
// from its claim (idempotency.RunClaimed, so every decision after an
// attempt is the executor's), their changes written in groups.
func (s *sweeper[In, Out]) claimed(ctx context.Context, bs idempotency.BatchStore, todo []candidate[In]) {
	if len(todo) == 0 {
		return
	}
	if s.stopErr(ctx) != nil {
		s.unstarted(len(todo))
		return
	}
	// An effect that parks an expired claim (ExpiredPark) would find, after
	// a crash, every key of the batch in doubt, most of them never sent: a
	// batch is claimed long before its last call. Its batch is claimed as
	// "nothing sent yet" instead, and each run records the start of its own
	// call (one statement per call), so a crash leaves in doubt only the
	// calls under way, as a run-by-run sweep does. Effects that take over
	// (ExpiredRetry) or already record call starts (ExpiredRetryUncalled)
	// need no such statement.
	track := s.eff.Expired == idempotency.ExpiredPark
	reqs := make([]idempotency.ClaimRequest, len(todo))
	for i, c := range todo {
		reqs[i] = idempotency.ClaimRequestFor(s.x, s.eff, c.key, c.fp)
		reqs[i].Track = reqs[i].Track || track
	}
	lease := reqs[0].Lease
	// Read before the claim: its lease and the provider's window are
	// counted from no later than this.
	at := s.x.Now()
	leased := at // when the waiting claims' leases were last renewed
	// Not cut by ctx: claims answered are released below if the sweep is
	// cancelled meanwhile, where claims cut half way would be left held.
	claims, err := bs.ClaimMany(context.WithoutCancel(ctx), reqs)
	s.mu.Lock()
	s.rep.ClaimBatches++
	s.mu.Unlock()
	if err != nil {
		// Claims the store may have taken expire under their lease.
		s.unstarted(len(todo))
		s.stop(fmt.Errorf("sweep: %s: claim of %d keys: %w", s.eff.Name, len(todo), err))
		return
	}

	g := s.newRunGroup(bs, lease)
	for _, c := range claims {
		if c.Verdict.Holds() {
			g.remaining++
		}
	}
	x := s.x.WithStore(g)
	lost := make([]bool, len(todo))

	var wg sync.WaitGroup
	stopAt := len(todo)
	for i, c := range todo {
		claim := claims[i]
		if !claim.Verdict.Holds() {
			// Decided by the claim (done, in flight, mismatch, ...): the
			// run reports it without touching the store.
			res, err := idempotency.RunClaimed(ctx, x, s.eff, c.in, claim, at)
			s.finished(c, res, err)
			continue
		}
		if s.stopErr(ctx) != nil {
			stopAt = i
			break
		}
		// A claim that waited half its lease for its turn is extended, with
		// every other claim still waiting, in one statement.
		if now := s.x.Now(); now.Sub(leased) >= lease/2 {
			gone, err := s.extend(bs, todo[i:], claims[i:], lease)
			if err != nil {
				s.stop(fmt.Errorf("sweep: %s: extend claims: %w", s.eff.Name, err))
				stopAt = i
				break
			}
			leased = now
			for j := range gone {
				lost[i+j] = true
			}
		}
		if lost[i] {
			g.finish(1)
			s.record(Failure{Index: c.index, Key: c.key, Outcome: idempotency.OutcomeError,
				Err: fmt.Errorf("sweep: %s: the claim was lost before its run: %w", s.eff.Name, idempotency.ErrClaimLost)})
			continue
		}
		sl := g.acquire()
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := idempotency.RunClaimed(context.WithValue(ctx, slotKey{}, sl), x, s.eff, c.in, claim, at)
			sl.release()
			g.finish(1)
			s.finished(c, res, err)
		}()
	}
	// After a stop: claims taken but never run are released at once, in one
	// statement, as if never taken, and counted as unstarted; the others
	// are reported as their claim decided.
	var rest []idempotency.Change
	for i := stopAt; i < len(todo); i++ {
		c, claim := todo[i], claims[i]
		if !claim.Verdict.Holds() {
			res, err := idempotency.RunClaimed(ctx, x, s.eff, c.in, claim, at)
			s.finished(c, res, err)
			continue
		}
		if !lost[i] {
			rest = append(rest, idempotency.Release(c.key.String(), claim.Record.Token, errStopped.Error(), 0))
		}
	}
	if len(rest) > 0 {
		_, _ = bs.TransitionMany(context.WithoutCancel(ctx), rest)
		s.unstarted(len(rest))
		g.finish(len(rest))
	}
	wg.Wait()
	g.changes.Close()
}

// extend renews the leases of the held claims among cs in one statement;
// it returns the positions of the claims it found lost.
func (s *sweeper[In, Out]) extend(bs idempotency.BatchStore, cs []candidate[In], claims []idempotency.Claim, lease time.Duration) (map[int]bool, error) {
	var changes []idempotency.Change
	var pos []int
	for j, c := range claims {
		if c.Verdict.Holds() {
			changes = append(changes, idempotency.Extend(cs[j].key.String(), c.Record.Token, lease))
			pos = append(pos, j)
		}
	}
	res, err := bs.TransitionMany(context.Background(), changes)
	if err != nil {
		return nil, err
	}
	lost := map[int]bool{}
	for k, r := range res {
		if r.Err != nil {
			lost[pos[k]] = true
		}
	}
	return lost, nil
}

// finished records the outcome of one run.
func (s *sweeper[In, Out]) finished(c candidate[In], res idempotency.Result[Out], err error) {
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
}

// slot is a run's right to do provider work: at most Concurrency runs hold
// one. A run gives it back as soon as it hands its last change to the
// group, so the next run starts while its completion waits to be written.
type slot struct {
	once sync.Once
	free func()
}

func (sl *slot) release() { sl.once.Do(sl.free) }

type slotKey struct{}

// runGroup is the store the runs of one batch see: claims and lookups go to
// the store, changes are gathered and written by TransitionMany. A group
// goes when it holds BatchSize changes, when every run of the batch still
// running waits in it (nothing more can join), when every slot is held by
// a run waiting in it (nothing more can start), or FlushDelay after its
// first change. Who waits is read from the open group's own members, never
// from counters that runs answered by an earlier group have yet to update:
// such stale counts sent groups of one or two changes as soon as runs
// stopped moving in step.
type runGroup struct {
	idempotency.Store
	changes *group.Batcher[member, idempotency.TransitionResult]
	sem     chan struct{}

	mu        sync.Mutex
	remaining int // held claims of the batch whose run has not finished
}

// member is a run's change waiting for its group, and whether the run
// still holds its slot (it will call the provider after the change).
type member struct {
	c     idempotency.Change
	holds bool
}

func (s *sweeper[In, Out]) newRunGroup(bs idempotency.BatchStore, lease time.Duration) *runGroup {
	delay := s.cfg.FlushDelay
	if delay > lease/4 {
		delay = lease / 4 // a completion never waits long enough to put its lease at risk
	}
	return &runGroup{
		Store: bs,
		sem:   make(chan struct{}, s.cfg.Concurrency),
		changes: &group.Batcher[member, idempotency.TransitionResult]{
			Max: s.cfg.BatchSize, Window: delay, After: s.cfg.After,
			Send: func(ms []member) ([]idempotency.TransitionResult, error) {
				cs := make([]idempotency.Change, len(ms))
				for i, m := range ms {
					cs[i] = m.c
				}
				return bs.TransitionMany(context.Background(), cs)
			},
		},
	}
}

// acquire waits for a free slot.
func (g *runGroup) acquire() *slot {
	g.sem <- struct{}{}
	return &slot{free: func() { <-g.sem }}
}

// finish counts n runs of the batch as finished.
func (g *runGroup) finish(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.remaining -= n
	g.changes.FlushIf(g.stuck)
}

// stuck reports whether nothing more can join the open group soon: every
// run of the batch still running waits in it, or every slot is held by a
// run waiting in it. The caller holds g.mu (the Batcher calls it under its
// own lock, taken after g.mu).
func (g *runGroup) stuck(open []member) bool {
	holding := 0
	for _, m := range open {
		if m.holds {
			holding++
		}
	}
	return len(open) >= g.remaining || holding >= cap(g.sem)
}

// terminal reports whether c is a run's last change of its claim: after
// it, the run makes no provider call.
func terminal(c idempotency.Change) bool {
	return c.By == idempotency.ByFormerHolder || (c.To != "" && !c.To.Held())
}

// Transition implements idempotency.Store: the change joins the batch's
// group. A run's last change gives back its slot first.
func (g *runGroup) Transition(ctx context.Context, c idempotency.Change) (idempotency.Record, error) {
	sl, _ := ctx.Value(slotKey{}).(*slot)
	holds := sl != nil
	if holds && terminal(c) {
		sl.release()
		holds = false
	}
	c.Hook = group.WithCallerValues(ctx, c.Hook)
	g.mu.Lock()
	wait := g.changes.AddIf(member{c: c, holds: holds}, g.stuck)
	g.mu.Unlock()

	r, err := wait()
	if err != nil {
		return idempotency.Record{}, err
	}
	return r.Record, r.Err
}
