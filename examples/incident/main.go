// Command incident replays the incident this library comes from, three ways.
//
// A cron job runs every 30 minutes, at least once, and its ticks sometimes
// overlap. For every Pro subscriber past 12 months it creates a one-time
// 10% Stripe promotion code. Its Idempotency-Key was floor(now / 30 days):
// at a bucket boundary two overlapping ticks computed different keys, Stripe
// correctly created two codes, and nothing in the database stopped the
// second row.
//
// The replay runs two overlapping ticks on either side of a bucket boundary
// against an in-process fake Stripe (the real stripe-go client over HTTP):
//
//  1. the original job: clock-bucket key, no database guard;
//  2. the hand-written two-layer fix: a business key, a pre-flight SELECT,
//     the call, and an insert whose unique violation means "already done";
//  3. this library: the same business key, a claim before the call, and
//     the ledger's partial unique index.
//
// By default it keeps state in memory; with DATABASE_URL set it uses that
// PostgreSQL (in a throwaway schema). It exits non-zero unless the library
// made exactly one code per subscriber.
//
//	go run ./examples/incident
//	DATABASE_URL=postgres://localhost/test go run ./examples/incident
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/effectonce/effectonce/examples/applyloyalty"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/idempotency/sweep"
	"github.com/effectonce/effectonce/stripeeffect"
	"github.com/effectonce/effectonce/stripeeffect/stripefake"
)

const (
	coupon = "ANNIV10"
	bucket = 30 * 24 * time.Hour
)

type subscriber struct {
	User, Subscription, Customer string
}

// row is one line of the final table.
type row struct {
	name     string
	codes    map[string]int // per customer, counted at the fake Stripe
	calls    int            // promotion-code requests that reached Stripe
	subCount int
}

func main() {
	n := flag.Int("subscribers", 36, "Pro subscribers past 12 months")
	flag.Parse()
	if err := run(context.Background(), *n, os.Getenv("DATABASE_URL")); err != nil {
		fmt.Fprintln(os.Stderr, "incident:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, n int, dsn string) error {
	subs := make([]subscriber, n)
	for i := range subs {
		subs[i] = subscriber{
			User:         fmt.Sprintf("u%03d", i+1),
			Subscription: fmt.Sprintf("sub_%03d", i+1),
			Customer:     fmt.Sprintf("cus_%03d", i+1),
		}
	}
	// Two ticks straddling a 30-day bucket boundary, 30 minutes apart.
	boundary := time.Unix(0, 0).Add(time.Duration(time.Date(2026, 2, 14, 0, 0, 0, 0, time.UTC).UnixNano()/int64(bucket)+1) * bucket).UTC()
	tickA, tickB := boundary.Add(-10*time.Minute), boundary.Add(20*time.Minute)

	db, err := openDB(ctx, dsn)
	if err != nil {
		return err
	}
	defer db.Close(ctx)

	fmt.Printf("Incident replay: %d Pro subscribers past 12 months, two overlapping cron ticks\n", n)
	fmt.Printf("tick A at %s (30-day bucket %d), tick B at %s (bucket %d)\n",
		tickA.Format(time.DateTime), bucketOf(tickA), tickB.Format(time.DateTime), bucketOf(tickB))
	fmt.Printf("state: %s; Stripe: in-process fake, real stripe-go client\n\n", db.Describe())

	rows := []row{}
	for _, sc := range []struct {
		name string
		fn   func(ctx context.Context, api *client.API, db database, subs []subscriber, tickA, tickB time.Time) error
	}{
		{"original: clock-bucket key, no DB guard", naive},
		{"two-layer fix, written by hand", handWritten},
		{"effectonce (key + claim + index)", library},
	} {
		fake := stripefake.New()
		fake.AddCoupon(coupon, 10)
		api := stripeeffect.NewAPI("sk_test_incident", &stripeeffect.APIConfig{URL: fake.URL()})
		if err := db.Reset(ctx); err != nil {
			fake.Close()
			return err
		}
		if err := sc.fn(ctx, api, db, subs, tickA, tickB); err != nil {
			fake.Close()
			return fmt.Errorf("%s: %w", sc.name, err)
		}
		r := row{name: sc.name, codes: map[string]int{}, subCount: len(subs)}
		for _, req := range fake.AllRequests() {
			if req.Method == "POST" && req.Path == "/v1/promotion_codes" {
				r.calls++
			}
		}
		// Count the codes Stripe really holds, per customer.
		it := api.PromotionCodes.List(&stripe.PromotionCodeListParams{ListParams: stripe.ListParams{Limit: stripe.Int64(100)}})
		for it.Next() {
			if c := it.PromotionCode().Customer; c != nil {
				r.codes[c.ID]++
			}
		}
		if err := it.Err(); err != nil {
			fake.Close()
			return err
		}
		rows = append(rows, r)
		fake.Close()
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "approach\tcodes per subscriber\tcodes created\tStripe calls\tsubscribers with 2+ codes\t")
	ok := true
	for i, r := range rows {
		total, dup, lo, hi := 0, 0, -1, 0
		for _, s := range subs {
			c := r.codes[s.Customer]
			total += c
			if c > 1 {
				dup++
			}
			if lo < 0 || c < lo {
				lo = c
			}
			hi = max(hi, c)
		}
		per := fmt.Sprint(lo)
		if lo != hi {
			per = fmt.Sprintf("%d-%d", lo, hi)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t\n", r.name, per, total, r.calls, dup)
		if i == len(rows)-1 && (lo != 1 || hi != 1) {
			ok = false
		}
	}
	tw.Flush()
	fmt.Println()
	if !ok {
		return fmt.Errorf("the library did not make exactly one code per subscriber")
	}
	fmt.Println("The original job made two codes per subscriber. The hand-written fix made one, but")
	fmt.Println("called Stripe from both ticks and leaned on Stripe's dedup. The library's claim")
	fmt.Println("stopped the second tick before it called Stripe.")
	return nil
}

func bucketOf(t time.Time) int64 { return t.UnixNano() / int64(bucket) }

// overlap runs the two ticks in lock-step over the same candidates, the
// worst case of an overlap: both load candidates before either writes, and
// for each subscriber both do step 1, then both step 2, and so on.
func overlap(subs []subscriber, steps int, step func(tick int, s subscriber, i int) error) error {
	for _, s := range subs {
		for i := range steps {
			for tick := range 2 {
				if err := step(tick, s, i); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func promoParams(s subscriber, key string) *stripe.PromotionCodeParams {
	p := &stripe.PromotionCodeParams{
		Coupon:         stripe.String(coupon),
		Customer:       stripe.String(s.Customer),
		MaxRedemptions: stripe.Int64(1),
	}
	p.SetIdempotencyKey(key)
	return p
}

// naive is the original job: the key comes from the clock and the
// discounts table has no unique index.
func naive(ctx context.Context, api *client.API, db database, subs []subscriber, tickA, tickB time.Time) error {
	ticks := []time.Time{tickA, tickB}
	var promo [2]*stripe.PromotionCode
	return overlap(subs, 3, func(tick int, s subscriber, step int) error {
		switch step {
		case 0: // the candidate query: no discount row yet, for both ticks
			_, err := db.HasDiscount(ctx, s.User)
			return err
		case 1:
			key := fmt.Sprintf("loyalty-%s-%d", s.User, bucketOf(ticks[tick]))
			pc, err := api.PromotionCodes.New(promoParams(s, key))
			promo[tick] = pc
			return err
		default:
			return db.InsertUnguarded(ctx, s.User, promo[tick].ID)
		}
	})
}

// handWritten is the seed's fix: a stable key, a pre-flight SELECT, the
// call, then an insert under a partial unique index whose 23505 means
// "already processed".
func handWritten(ctx context.Context, api *client.API, db database, subs []subscriber, _, _ time.Time) error {
	var skip [2]bool
	var promo [2]*stripe.PromotionCode
	return overlap(subs, 3, func(tick int, s subscriber, step int) error {
		switch step {
		case 0:
			has, err := db.HasDiscount(ctx, s.User)
			skip[tick] = has
			return err
		case 1:
			if skip[tick] {
				return nil
			}
			key := fmt.Sprintf("loyalty-%s-%s-12", s.User, s.Subscription)
			pc, err := api.PromotionCodes.New(promoParams(s, key))
			promo[tick] = pc
			return err
		default:
			if skip[tick] {
				return nil
			}
			_, err := db.InsertGuarded(ctx, s.User, promo[tick].ID) // false: collapsed 23505
			return err
		}
	})
}

// library runs the two ticks as concurrent sweeps of one effect.
func library(ctx context.Context, api *client.API, db database, subs []subscriber, _, _ time.Time) error {
	exec, err := idempotency.NewExecutor(db.Store(), nil)
	if err != nil {
		return err
	}
	eff := stripeeffect.PromotionCodeEffect(api, "loyalty.anniversary",
		func(s subscriber) (idempotency.Key, error) {
			return applyloyalty.Key(applyloyalty.Candidate{UserID: s.User, SubscriptionID: s.Subscription, Milestone: applyloyalty.MilestoneMonths})
		},
		func(s subscriber) stripeeffect.PromotionCode {
			return stripeeffect.PromotionCode{Coupon: coupon, Customer: s.Customer}
		})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for tick := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[tick] = sweep.Run(ctx, exec, eff, sweep.Slice(subs), &sweep.Config{Concurrency: 4})
		}()
	}
	wg.Wait()
	// A tick that met a claim in flight leaves it to the other: run a
	// third tick, as cron would, to show nothing is left undone.
	if _, err := sweep.Run(ctx, exec, eff, sweep.Slice(subs), nil); err != nil {
		return err
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
