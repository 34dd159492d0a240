package idempotency

import (
	"context"
	"fmt"
)

var _ BatchStore = (*MemStore)(nil)

// ClaimMany implements BatchStore: every request decided in order, as
// successive Claim calls, so requests for one key meet what the earlier
// ones left. Requests are checked before any is made.
func (s *MemStore) ClaimMany(ctx context.Context, reqs []ClaimRequest) ([]Claim, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, r := range reqs {
		if r.Key == "" || r.Lease <= 0 {
			return nil, fmt.Errorf("idempotency: memstore: claim needs a key and a positive lease")
		}
	}
	// Once started, a batch is answered whole: a cancellation between two
	// requests must not leave claims made and unreported.
	bg := context.WithoutCancel(ctx)
	out := make([]Claim, len(reqs))
	for i, r := range reqs {
		c, err := s.Claim(bg, r)
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

// TransitionMany implements BatchStore: every change applied in order as
// Transition applies it. A hook runs without the lock, as with Transition,
// and what it did is not undone if its change is then refused.
func (s *MemStore) TransitionMany(ctx context.Context, changes []Change) ([]TransitionResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Once started, a batch is applied whole, whatever happens to ctx.
	bg := context.WithoutCancel(ctx)
	out := make([]TransitionResult, len(changes))
	for i, c := range changes {
		rec, err := s.Transition(bg, c)
		out[i] = TransitionResult{Record: rec, Err: err}
	}
	return out, nil
}
