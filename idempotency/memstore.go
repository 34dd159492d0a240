package idempotency

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MemStoreConfig configures a MemStore. The zero value is ready to use.
type MemStoreConfig struct {
	// Now returns the current time, for leases and dedup windows. Nil
	// means time.Now. Tests pass a fake clock instead of sleeping.
	Now func() time.Time
}

// MemStore is an in-memory Store with the same semantics as the Postgres
// store: at most one active record per key, failed and revoked records
// exempt. It is for unit tests, demos and single-process tools; its records
// die with the process.
type MemStore struct {
	now func() time.Time

	mu      sync.Mutex
	active  map[string]*Record
	history []Record // exempt (failed, revoked) records, oldest first
	tokens  int64
}

var _ Store = (*MemStore)(nil)

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

func copyRecord(r *Record) Record {
	c := *r
	c.Fingerprint = slices.Clone(r.Fingerprint)
	c.Result = slices.Clone(r.Result)
	return c
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
			Status:         StatusPending,
			Fingerprint:    slices.Clone(req.Fingerprint),
			Token:          s.nextToken(),
			Attempts:       1,
			LeaseUntil:     now.Add(req.Lease),
			FirstClaimedAt: now,
			UpdatedAt:      now,
		}
		s.active[req.Key] = r
		return Claim{Record: copyRecord(r), Acquired: true}, nil
	}
	if r.Status != StatusPending {
		return Claim{Record: copyRecord(r)}, nil
	}
	if canTakeOver(r, req, now) {
		r.CallStarted = false
		r.Token = s.nextToken()
		r.Attempts++
		r.LeaseUntil = now.Add(req.Lease)
		r.UpdatedAt = now
		return Claim{Record: copyRecord(r), Acquired: true}, nil
	}
	return Claim{Record: copyRecord(r), Stuck: isStuck(r, now)}, nil
}

// canTakeOver is the takeover rule every store implements.
func canTakeOver(r *Record, req ClaimRequest, now time.Time) bool {
	if r.Parked || !r.FingerprintMatches(req.Fingerprint) {
		return false
	}
	// Past the provider's dedup window a retry under the same key is a new
	// request to the provider: never take over, released or not.
	if req.Window > 0 && now.Sub(r.FirstClaimedAt) >= req.Window {
		return false
	}
	if r.LeaseUntil.IsZero() { // released
		return true
	}
	return !now.Before(r.LeaseUntil) && req.TakeOver && !(req.OnlyUncalled && r.CallStarted)
}

// isStuck reports, for a pending record a claim did not acquire, that no
// live lease holds it: parked, released past the window, or expired.
func isStuck(r *Record, now time.Time) bool {
	return r.Status == StatusPending && (r.Parked || r.LeaseUntil.IsZero() || !now.Before(r.LeaseUntil))
}

// isListedStuck is ListStuck's rule: pending records nobody will finish on
// their own. Released ones are retried by the next run, unless they are
// past the given dedup window.
func isListedStuck(r *Record, now time.Time, window time.Duration) bool {
	if r.Status != StatusPending {
		return false
	}
	if r.LeaseUntil.IsZero() && !r.Parked {
		return window > 0 && now.Sub(r.FirstClaimedAt) >= window
	}
	return r.Parked || !now.Before(r.LeaseUntil)
}

// held returns the pending record held under token, or ErrClaimLost.
func (s *MemStore) held(key string, token int64) (*Record, error) {
	r, ok := s.active[key]
	if !ok || r.Status != StatusPending || r.Token != token {
		return nil, ErrClaimLost
	}
	return r, nil
}

// Complete implements Store.
func (s *MemStore) Complete(ctx context.Context, req CompleteRequest) (Record, error) {
	if req.Status != StatusApplied && req.Status != StatusSkipped {
		return Record{}, fmt.Errorf("idempotency: memstore: complete with status %q", req.Status)
	}
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.held(req.Key, req.Token)
	if err != nil {
		return Record{}, err
	}
	if req.Hook != nil {
		if err := req.Hook(ctx, nil); err != nil {
			return Record{}, fmt.Errorf("idempotency: memstore: complete hook: %w", err)
		}
	}
	s.finish(r, req.Status, req.Result, "")
	return copyRecord(r), nil
}

func (s *MemStore) finish(r *Record, st Status, result []byte, reason string) {
	r.Status = st
	r.Result = slices.Clone(result)
	r.LeaseUntil = time.Time{}
	r.Parked = false
	r.Reason = reason
	r.UpdatedAt = s.now()
	if !st.Active() {
		delete(s.active, r.Key)
		s.history = append(s.history, copyRecord(r))
	}
}

// Release implements Store.
func (s *MemStore) Release(ctx context.Context, req ReleaseRequest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.held(req.Key, req.Token)
	if err != nil {
		return err
	}
	r.LeaseUntil = time.Time{}
	r.Parked = req.Park
	r.CallStarted = r.CallStarted && req.Park
	r.Reason = req.Reason
	r.UpdatedAt = s.now()
	return nil
}

// MarkCalling implements Store.
func (s *MemStore) MarkCalling(ctx context.Context, key string, token int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.held(key, token)
	if err != nil {
		return err
	}
	r.CallStarted = true
	r.UpdatedAt = s.now()
	return nil
}

// Fail implements Store.
func (s *MemStore) Fail(ctx context.Context, req FailRequest) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.held(req.Key, req.Token)
	if err != nil {
		return Record{}, err
	}
	if req.Hook != nil {
		if err := req.Hook(ctx, nil); err != nil {
			return Record{}, fmt.Errorf("idempotency: memstore: fail hook: %w", err)
		}
	}
	s.finish(r, StatusFailed, nil, req.Reason)
	return copyRecord(r), nil
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
			out[k] = copyRecord(r)
		}
	}
	return out, nil
}

// Revoke implements Store.
func (s *MemStore) Revoke(ctx context.Context, key, reason string) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.active[key]
	if !ok || !r.Status.Done() {
		return Record{}, ErrNotFound
	}
	s.finish(r, StatusRevoked, r.Result, reason)
	return copyRecord(r), nil
}

// ListStuck implements Store.
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
		if isListedStuck(r, now, req.Window) && (req.Namespace == "" || r.Namespace == req.Namespace) {
			out = append(out, copyRecord(r))
		}
	}
	slices.SortFunc(out, func(a, b Record) int { return a.FirstClaimedAt.Compare(b.FirstClaimedAt) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Settle implements Store.
func (s *MemStore) Settle(ctx context.Context, req SettleRequest) (Record, error) {
	switch req.Status {
	case StatusApplied, StatusSkipped, StatusFailed:
	default:
		return Record{}, fmt.Errorf("idempotency: memstore: settle with status %q", req.Status)
	}
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.held(req.Key, req.Token)
	if err != nil {
		return Record{}, err
	}
	s.finish(r, req.Status, req.Result, req.Reason)
	return copyRecord(r), nil
}

// History returns the exempt (failed and revoked) records of key, oldest
// first, for tests and audits.
func (s *MemStore) History(key string) []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Record
	for _, r := range s.history {
		if r.Key == key {
			out = append(out, copyRecord(&r))
		}
	}
	return out
}
