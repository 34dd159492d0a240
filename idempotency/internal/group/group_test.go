package group_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/idempotency/internal/group"
)

// recorder is a Send that records the groups it was given and answers
// each item with its double.
type recorder struct {
	mu     sync.Mutex
	groups [][]int
	err    error
}

func (r *recorder) send(items []int) ([]int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.groups = append(r.groups, append([]int(nil), items...))
	if r.err != nil {
		return nil, r.err
	}
	out := make([]int, len(items))
	for i, v := range items {
		out[i] = 2 * v
	}
	return out, nil
}

func (r *recorder) sent() [][]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]int(nil), r.groups...)
}

// never is an After whose timer never fires: groups go by size, Flush or
// Close only.
func never(time.Duration) <-chan time.Time { return nil }

// waitAll calls every wait function at once and returns the results.
func waitAll(t *testing.T, waits []func() (int, error)) []int {
	t.Helper()
	out := make([]int, len(waits))
	errs := make([]error, len(waits))
	var wg sync.WaitGroup
	for i, w := range waits {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = w()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	return out
}

func TestAGroupGoesWhenFull(t *testing.T) {
	t.Parallel()
	r := &recorder{}
	b := &group.Batcher[int, int]{Send: r.send, Max: 3, Window: time.Hour, After: never}
	var waits []func() (int, error)
	for i := 1; i <= 7; i++ {
		waits = append(waits, b.Add(i))
	}
	// Two full groups went; the seventh item waits for company.
	got := waitAll(t, waits[:6])
	require.Equal(t, []int{2, 4, 6, 8, 10, 12}, got)
	require.ElementsMatch(t, [][]int{{1, 2, 3}, {4, 5, 6}}, r.sent(), "two groups, sent side by side")
	b.Flush()
	v, err := waits[6]()
	require.NoError(t, err)
	require.Equal(t, 14, v)
	require.Equal(t, []int{7}, r.sent()[2])
}

func TestFlushSendsTheOpenGroupAndCloseSendsTheRestAlone(t *testing.T) {
	t.Parallel()
	r := &recorder{}
	b := &group.Batcher[int, int]{Send: r.send, Max: 100, After: never}
	w1, w2 := b.Add(1), b.Add(2)
	b.Flush()
	b.Flush() // nothing open: nothing sent
	require.Equal(t, []int{2, 4}, waitAll(t, []func() (int, error){w1, w2}))
	w3 := b.Add(3)
	b.Close()
	require.Equal(t, []int{6}, waitAll(t, []func() (int, error){w3}))
	v, err := b.Do(4) // closed: sent alone, at once
	require.NoError(t, err)
	require.Equal(t, 8, v)
	require.Equal(t, [][]int{{1, 2}, {3}, {4}}, r.sent())
}

// TestAddIfAndFlushIfDecideFromTheOpenGroupOnly: the predicate sees the
// members of the open group and none of a group already sent, so a caller
// counting who waits is never misled by members answered earlier.
func TestAddIfAndFlushIfDecideFromTheOpenGroupOnly(t *testing.T) {
	t.Parallel()
	r := &recorder{}
	b := &group.Batcher[int, int]{Send: r.send, Max: 100, After: never}
	var seen [][]int
	two := func(open []int) bool {
		seen = append(seen, append([]int(nil), open...))
		return len(open) >= 2
	}
	w1 := b.AddIf(1, two)
	w2 := b.AddIf(2, two) // the open group holds 2: it goes
	w3 := b.AddIf(3, two) // a new group: 1 and 2 are not counted
	require.Equal(t, []int{2, 4}, waitAll(t, []func() (int, error){w1, w2}))
	require.Equal(t, [][]int{{1}, {1, 2}, {3}}, seen)

	b.FlushIf(func(open []int) bool { return len(open) > 1 }) // only 3: stays
	b.FlushIf(func(open []int) bool { return len(open) == 1 })
	require.Equal(t, []int{6}, waitAll(t, []func() (int, error){w3}))
	b.FlushIf(func([]int) bool { t.Fatal("called with no open group"); return true })
	require.Equal(t, [][]int{{1, 2}, {3}}, r.sent())
}

func TestTheWindowSendsAGroupThatIsNotFull(t *testing.T) {
	t.Parallel()
	r := &recorder{}
	fire := make(chan time.Time)
	var windows []time.Duration
	b := &group.Batcher[int, int]{Send: r.send, Max: 100, Window: 5 * time.Millisecond,
		After: func(d time.Duration) <-chan time.Time { windows = append(windows, d); return fire }}
	w1 := b.Add(1)
	w2 := b.Add(2)
	done := make(chan []int)
	go func() { done <- waitAll(t, []func() (int, error){w1, w2}) }()
	fire <- time.Now() // the leader's timer: the group goes, not full
	require.Equal(t, []int{2, 4}, <-done)
	require.Equal(t, [][]int{{1, 2}}, r.sent())
	require.Equal(t, []time.Duration{5 * time.Millisecond}, windows, "one timer per group, started by its first member")
}

func TestAFailedSendFailsEveryMember(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset")
	r := &recorder{err: boom}
	b := &group.Batcher[int, int]{Send: r.send, Max: 2, After: never}
	w1, w2 := b.Add(1), b.Add(2)
	for _, w := range []func() (int, error){w1, w2} {
		_, err := w()
		require.ErrorIs(t, err, boom)
	}

	short := &group.Batcher[int, int]{Send: func([]int) ([]int, error) { return []int{1}, nil }, Max: 2, After: never}
	w1, w2 = short.Add(1), short.Add(2)
	// The full group goes with whichever member waits first.
	_, err := w2()
	require.ErrorIs(t, err, group.ErrResults)
	_, err = w1()
	require.ErrorIs(t, err, group.ErrResults)
}

func TestManyConcurrentCallersEachGetTheirOwnAnswer(t *testing.T) {
	t.Parallel()
	r := &recorder{}
	b := &group.Batcher[int, int]{Send: r.send, Max: 8, Window: time.Millisecond}
	var wg sync.WaitGroup
	for i := range 500 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := b.Do(i)
			if err != nil || v != 2*i {
				t.Errorf("item %d: got %d, %v", i, v, err)
			}
		}()
	}
	wg.Wait()
	n := 0
	for _, g := range r.sent() {
		require.LessOrEqual(t, len(g), 8)
		n += len(g)
	}
	require.Equal(t, 500, n)
}

type key struct{}

func TestValuesPrefersTheFirstContextThenTheSecond(t *testing.T) {
	t.Parallel()
	type other struct{}
	first := context.WithValue(context.Background(), key{}, "tx")
	then := context.WithValue(context.WithValue(context.Background(), key{}, "caller"), other{}, "span")
	ctx := group.Values(first, then)
	require.Equal(t, "tx", ctx.Value(key{}))
	require.Equal(t, "span", ctx.Value(other{}))
	require.Nil(t, ctx.Value("missing"))
}

// TestAPanickingSendFailsTheOtherMembersInsteadOfHangingThem: when a
// group's send panics (a hook of one member did), the panic goes on in the
// member that sent, and every other member gets ErrPanic at once instead
// of waiting for ever.
func TestAPanickingSendFailsTheOtherMembersInsteadOfHangingThem(t *testing.T) {
	t.Parallel()
	b := &group.Batcher[int, int]{Send: func([]int) ([]int, error) { panic("hook exploded") }, Max: 2, After: never}
	w1, w2 := b.Add(1), b.Add(2)
	require.PanicsWithValue(t, "hook exploded", func() { _, _ = w1() }, "the sender's panic goes on")
	_, err := w2()
	require.ErrorIs(t, err, group.ErrPanic)
	require.ErrorContains(t, err, "hook exploded")
}
