package sweep

import (
	"context"
	"errors"
)

// Source delivers a sweep's candidates. It calls yield with successive
// slices of candidates, in any sizes (the sweep regroups them into batches
// of Config.BatchSize), and returns when there are no more.
//
// A Source must not call yield concurrently and must not call it after it
// returned. When yield returns an error (the sweep was cancelled or must
// stop), the Source must stop and return that error, or an error wrapping
// it. yield does not keep the slice: the Source may reuse it once yield
// returns.
//
// A Source is read once per Run, so a candidate query should select the
// intents that may need work (for example "Pro subscribers past their 12th
// month"); it need not exclude the ones already done, which the sweep's
// pre-flight skips without a claim or a provider call.
type Source[In any] func(ctx context.Context, yield func([]In) error) error

// Slice returns a Source delivering items.
func Slice[In any](items []In) Source[In] {
	return func(ctx context.Context, yield func([]In) error) error {
		if len(items) == 0 {
			return nil
		}
		return yield(items)
	}
}

// errCursorStuck reports a Pages function that returned the cursor it was
// given, which would loop for ever.
var errCursorStuck = errors.New("sweep: pages: next cursor equals the current one")

// Pages returns a Source that reads candidates page by page. next is called
// first with the empty cursor, then with each nextCursor it returned, until
// it returns an empty nextCursor. A page may be empty. A nextCursor equal to
// the cursor passed in is an error, not an endless loop.
//
// Prefer keyset cursors (the last id of the page) over offsets: the sweep
// changes the ledger as it goes, and a query that filters on it would shift
// offsets under the reader and skip candidates.
func Pages[In any](next func(ctx context.Context, cursor string) (items []In, nextCursor string, err error)) Source[In] {
	return func(ctx context.Context, yield func([]In) error) error {
		cursor := ""
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			items, nextCursor, err := next(ctx, cursor)
			if err != nil {
				return err
			}
			if len(items) > 0 {
				if err := yield(items); err != nil {
					return err
				}
			}
			if nextCursor == "" {
				return nil
			}
			if nextCursor == cursor {
				return errCursorStuck
			}
			cursor = nextCursor
		}
	}
}
