package idempotency

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MemStoreConfig configures a MemStore. The zero value is ready to use.
type MemStoreConfig struct {
	// Now returns the current time, for leases, due times and dedup
	// windows. Nil means time.Now. Tests pass a fake clock instead of
	// sleeping.
	Now func() time.Time
}

// MemStore is an in-memory Store and Operator with the same semantics as
// the Postgres store: at most one active record per key, failed and revoked
// records exempt, the claim rule of Decide, the transitions of Transitions.
// It is for unit tests, demos and single-process tools; its records die
// with the process.
//
// Hooks (Change.Hook) run without the store's lock held, so a hook may read
// or change the store; the change is applied afterwards only if the record
// is still held under the same token, else ErrClaimLost. Unlike a
// database transaction, what the hook itself did is not undone then.
type MemStore struct {
	now func() time.Time

	mu      sync.Mutex
	active  map[string]*Record
	history []Record // exempt (failed, revoked) records, oldest first
	tokens  int64
}

var (
	_ Store         = (*MemStore)(nil)
	_ Operator      = (*MemStore)(nil)
	_ RefusalLookup = (*MemStore)(nil)
)

// NewMemStore returns an empty store. cfg may be nil.
func NewMemStore(cfg *MemStoreConfig) *MemStore {
	s := &MemStore{now: time.Now, active: make(map[string]*Record)}
	if cfg != nil && cfg.Now != nil {
		s.now = cfg.Now
	}
	return s
}

func (s *MemStore) nextToken() int64 {
	s.tokens++
	return s.tokens
}

// Claim implements Store.
func (s *MemStore) Claim(ctx context.Context, req ClaimRequest) (Claim, error) {
	if err := ctx.Err(); err != nil {
		return Claim{}, err
	}
	if req.Key == "" || req.Lease <= 0 {
		return Claim{}, fmt.Errorf("idempotency: memstore: claim needs a key and a positive lease")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	r, ok := s.active[req.Key]
	if !ok {
		r = &Record{
			Key:            req.Key,
			Namespace:      req.Namespace,
			State:          req.claimState(),
			Fingerprint:    slices.Clone(req.Fingerprint),
			Token:          s.nextToken(),
			Claims:         1,
			Generation:     1,
			LeaseUntil:     now.Add(req.Lease),
			DedupUntil:     NewDedupDeadline(now, req.Window),
			FirstClaimedAt: now,
			UpdatedAt:      now,
		}
		s.active[req.Key] = r
		return Claim{Verdict: VerdictAcquired, Record: r.Clone()}, nil
	}
	v, to := Decide(*r, req, now)
	if !v.Holds() {
		return Claim{Verdict: v, Record: r.Clone()}, nil
	}
	prev := r.State
	if prev == StateClaimed || prev == StateReleased {
		// Nothing acted under the key: its provider memory starts now.
		r.DedupUntil = NewDedupDeadline(now, req.Window)
	} else {
		r.DedupUntil = DedupDeadline(*r, req.Window)
	}
	r.PrevState, r.State = prev, to
	r.Token = s.nextToken()
	r.Claims++
	r.LeaseUntil = now.Add(req.Lease)
	r.DueAt = time.Time{}
	r.UpdatedAt = now
	return Claim{Verdict: v, Record: r.Clone()}, nil
}

// Transition implements Store.
func (s *MemStore) Transition(ctx context.Context, c Change) (Record, error) {
	if err := c.Validate(); err != nil {
		return Record{}, err
	}
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	if c.By == ByFormerHolder {
		return s.recover(ctx, c)
	}
	s.mu.Lock()
	r, err := s.held(c.Key, c.Token, c.From())
	if err != nil {
		s.mu.Unlock()
		return Record{}, err
	}
	state := r.State
	if c.Hook != nil {
		s.mu.Unlock()
		if err := c.Hook(ctx); err != nil {
			return Record{}, fmt.Errorf("idempotency: memstore: hook: %w", err)
		}
		s.mu.Lock()
		if r, err = s.held(c.Key, c.Token, []State{state}); err != nil {
			s.mu.Unlock()
			return Record{}, err
		}
	}
	defer s.mu.Unlock()
	s.apply(r, c.To, c)
	return r.Clone(), nil
}

// held returns the active record of key held under token in one of the
// states from, or ErrClaimLost.
func (s *MemStore) held(key string, token int64, from []State) (*Record, error) {
	r, ok := s.active[key]
	if !ok || r.Token != token || !slices.Contains(from, r.State) {
		return nil, ErrClaimLost
	}
	return r, nil
}

// apply makes the change to r (the caller holds the lock).
func (s *MemStore) apply(r *Record, to State, c Change) {
	now := s.now()
	if to == "" {
		to = r.State
	}
	r.PrevState, r.State = r.State, to
	switch {
	case to.Done():
		r.Result = slices.Clone(nonNil(c.Result))
		r.LeaseUntil, r.DueAt = time.Time{}, time.Time{}
	case to == StateFailed:
		r.Result = nil
		r.LeaseUntil, r.DueAt = time.Time{}, time.Time{}
	case to.Held():
		if c.Lease > 0 {
			r.LeaseUntil = now.Add(c.Lease)
		}
		if c.NewGeneration() {
			r.Generation++
			r.DedupUntil = NewDedupDeadline(now, c.Window)
		}
	case to == StateReleased:
		r.LeaseUntil, r.DueAt = time.Time{}, dueAt(now, c.DueIn)
	case to == StateUnknown, to == StateInDoubt:
		if c.AttemptEnded {
			r.LeaseUntil = time.Time{}
		}
		r.DueAt = dueAt(now, c.DueIn)
	}
	if c.To != "" {
		r.Reason = c.Reason
	}
	r.Evidence = AppendEvidence(r.Evidence, c.Evidence)
	r.UpdatedAt = now
	if !to.Active() {
		delete(s.active, r.Key)
		s.history = append(s.history, r.Clone())
	}
}

func dueAt(now time.Time, in time.Duration) time.Time {
	if in <= 0 {
		return time.Time{}
	}
	return now.Add(in)
}

// recover applies a Recover change (see there).
func (s *MemStore) recover(ctx context.Context, c Change) (Record, error) {
	s.mu.Lock()
	cur, err := s.recoverable(c)
	if err != nil {
		s.mu.Unlock()
		return cur, err
	}
	if c.Hook != nil {
		s.mu.Unlock()
		if err := c.Hook(ctx); err != nil {
			return Record{}, fmt.Errorf("idempotency: memstore: hook: %w", err)
		}
		s.mu.Lock()
		again, err := s.recoverable(c)
		if err != nil || again.Token != cur.Token || again.State != cur.State {
			s.mu.Unlock()
			if err == nil {
				err = ErrClaimLost
			}
			return again, err
		}
	}
	defer s.mu.Unlock()
	r, ok := s.active[c.Key]
	if !ok {
		now := s.now()
		r = &Record{Key: c.Key, Namespace: c.Namespace, Fingerprint: slices.Clone(c.Fingerprint), Claims: 1,
			Generation: 1, FirstClaimedAt: now}
		s.active[c.Key] = r
	}
	r.Token = s.nextToken()
	s.apply(r, StateApplied, c)
	if r.Reason == "" {
		r.Reason = "recovered: the completion of a lost claim"
	}
	return r.Clone(), nil
}

// recoverable returns the key's active record and whether a former holder
// may record its success over it: a nil error when there is none or it is
// pending with no live claim and the same fingerprint.
func (s *MemStore) recoverable(c Change) (Record, error) {
	r, ok := s.active[c.Key]
	if !ok {
		return Record{}, nil
	}
	now := s.now()
	switch {
	case r.State.Held() && now.Before(r.LeaseUntil):
		return r.Clone(), ErrClaimLive
	case r.State.Done(), !r.FingerprintMatches(c.Fingerprint):
		return r.Clone(), ErrClaimLost
	}
	return r.Clone(), nil
}

// Lookup implements Store.
func (s *MemStore) Lookup(ctx context.Context, keys []string) (map[string]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Record, len(keys))
	for _, k := range keys {
		if r, ok := s.active[k]; ok {
			out[k] = r.Clone()
		}
	}
	return out, nil
}

// ListStuck implements Operator.
func (s *MemStore) ListStuck(ctx context.Context, req ListStuckRequest) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	limit := req.Limit
	if limit <= 0 {
		limit = 100
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var out []Record
	for _, r := range s.active {
		if Stuck(*r, now) && (req.Namespace == "" || r.Namespace == req.Namespace) {
			out = append(out, r.Clone())
		}
	}
	slices.SortFunc(out, func(a, b Record) int {
		if c := a.FirstClaimedAt.Compare(b.FirstClaimedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.Token, b.Token)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Settle implements Operator.
func (s *MemStore) Settle(ctx context.Context, req SettleRequest) (Record, error) {
	if err := req.Validate(); err != nil {
		return Record{}, err
	}
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.held(req.Key, req.Token, Allowed(req.State, ByOperator))
	if err != nil {
		return Record{}, err
	}
	if r.State.Held() && s.now().Before(r.LeaseUntil) && !req.Force {
		return r.Clone(), ErrClaimLive
	}
	s.apply(r, req.State, Change{To: req.State, Result: req.Result, Reason: req.Reason})
	return r.Clone(), nil
}

// Revoke implements Operator.
func (s *MemStore) Revoke(ctx context.Context, key, reason string) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.active[key]
	if !ok || !r.State.Done() {
		return Record{}, ErrNotFound
	}
	s.apply(r, StateRevoked, Change{To: StateRevoked, Result: r.Result, Reason: reason})
	return r.Clone(), nil
}

// History implements Operator.
func (s *MemStore) History(ctx context.Context, key string) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Record
	if r, ok := s.active[key]; ok {
		out = append(out, r.Clone())
	}
	for i := len(s.history) - 1; i >= 0; i-- {
		if s.history[i].Key == key {
			out = append(out, s.history[i].Clone())
		}
	}
	return out, nil
}

// LastRefusals implements RefusalLookup.
func (s *MemStore) LastRefusals(ctx context.Context, keys []string, since time.Time) (map[string]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]Record{}
	for i := len(s.history) - 1; i >= 0; i-- {
		r := s.history[i]
		if _, seen := out[r.Key]; seen || !want[r.Key] || r.State != StateFailed || r.UpdatedAt.Before(since) {
			continue
		}
		out[r.Key] = r.Clone()
	}
	return out, nil
}
