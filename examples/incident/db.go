package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/examples/applyloyalty"
	"github.com/effectonce/effectonce/idempotency"
	"github.com/effectonce/effectonce/pgguard"
)

// database is where the replay keeps its discounts and the ledger.
type database interface {
	Describe() string
	Reset(ctx context.Context) error
	// HasDiscount is the candidate query / pre-flight.
	HasDiscount(ctx context.Context, user string) (bool, error)
	// InsertUnguarded is the original table: no unique index.
	InsertUnguarded(ctx context.Context, user, promo string) error
	// InsertGuarded inserts under the partial unique index; false means
	// the unique violation was collapsed into "already processed".
	InsertGuarded(ctx context.Context, user, promo string) (bool, error)
	Store() idempotency.Store
	Close(ctx context.Context)
}

func openDB(ctx context.Context, dsn string) (database, error) {
	if dsn == "" {
		return &memDB{}, nil
	}
	return openPG(ctx, dsn)
}

type memDB struct {
	mu        sync.Mutex
	discounts map[string][]string
	store     *idempotency.MemStore
}

func (m *memDB) Describe() string { return "in memory (set DATABASE_URL to use PostgreSQL)" }

func (m *memDB) Reset(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.discounts = map[string][]string{}
	m.store = idempotency.NewMemStore(nil)
	return nil
}

func (m *memDB) HasDiscount(_ context.Context, user string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.discounts[user]) > 0, nil
}

func (m *memDB) InsertUnguarded(_ context.Context, user, promo string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.discounts[user] = append(m.discounts[user], promo)
	return nil
}

func (m *memDB) InsertGuarded(_ context.Context, user, promo string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.discounts[user]) > 0 {
		return false, nil // the unique index's answer
	}
	m.discounts[user] = append(m.discounts[user], promo)
	return true, nil
}

func (m *memDB) Store() idempotency.Store { return m.store }
func (m *memDB) Close(context.Context)    {}

// pgDB keeps everything in a throwaway schema, dropped at the end.
type pgDB struct {
	pool   *pgxpool.Pool
	schema string
	store  *pgguard.Store
}

// guard is applyloyalty's: the seed's partial unique index.
var guard = applyloyalty.Guard

func openPG(ctx context.Context, dsn string) (*pgDB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	schema := fmt.Sprintf("incident_%d", time.Now().UnixNano())
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d := &pgDB{pool: pool, schema: schema}
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		pool.Close()
		return nil, fmt.Errorf("create schema: %w", err)
	}
	ddl, err := guard.IndexDDL()
	if err != nil {
		d.Close(ctx)
		return nil, err
	}
	for _, q := range []string{
		`CREATE TABLE loyalty_discounts_unguarded (user_id text NOT NULL, promotion_code_id text NOT NULL)`,
		`CREATE TABLE loyalty_discounts (user_id text NOT NULL, promotion_code_id text NOT NULL, status text NOT NULL DEFAULT 'applied')`,
		ddl,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			d.Close(ctx)
			return nil, err
		}
	}
	if err := pgguard.Migrate(ctx, pool, nil); err != nil {
		d.Close(ctx)
		return nil, err
	}
	if d.store, err = pgguard.New(pool, nil); err != nil {
		d.Close(ctx)
		return nil, err
	}
	return d, nil
}

func (d *pgDB) Describe() string {
	return "PostgreSQL (DATABASE_URL), throwaway schema " + d.schema
}

func (d *pgDB) Reset(ctx context.Context) error {
	_, err := d.pool.Exec(ctx, `TRUNCATE loyalty_discounts_unguarded, loyalty_discounts, `+pgguard.DefaultTable)
	return err
}

func (d *pgDB) HasDiscount(ctx context.Context, user string) (bool, error) {
	found, err := pgguard.Exists(ctx, d.pool, guard, user)
	if err != nil {
		return false, err
	}
	if found {
		return true, nil
	}
	var n int
	err = d.pool.QueryRow(ctx, `SELECT count(*) FROM loyalty_discounts_unguarded WHERE user_id = $1`, user).Scan(&n)
	return n > 0, err
}

func (d *pgDB) InsertUnguarded(ctx context.Context, user, promo string) error {
	_, err := d.pool.Exec(ctx, `INSERT INTO loyalty_discounts_unguarded (user_id, promotion_code_id) VALUES ($1, $2)`, user, promo)
	return err
}

func (d *pgDB) InsertGuarded(ctx context.Context, user, promo string) (bool, error) {
	res, err := pgguard.InsertOnce(ctx, d.pool, guard,
		`INSERT INTO loyalty_discounts (user_id, promotion_code_id) VALUES ($1, $2)`, user, promo)
	return res.Inserted, err
}

func (d *pgDB) Store() idempotency.Store { return d.store }

func (d *pgDB) Close(ctx context.Context) {
	_, _ = d.pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{d.schema}.Sanitize()+" CASCADE")
	d.pool.Close()
}
