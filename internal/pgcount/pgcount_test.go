package pgcount_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/effectonce/effectonce/internal/pgcount"
)

func TestStatementCounter(t *testing.T) {
	var c pgcount.StatementCounter
	cfg, err := pgxpool.ParseConfig("postgres://localhost/db")
	require.NoError(t, err)
	c.Configure(cfg)
	require.Same(t, &c, cfg.ConnConfig.Tracer)

	ctx := context.Background()
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := c.TraceQueryStart(ctx, nil, pgx.TraceQueryStartData{SQL: "SELECT 1"})
			c.TraceQueryEnd(ctx, nil, pgx.TraceQueryEndData{})
		}()
	}
	wg.Wait()
	require.Equal(t, 10, c.Count())
	n, stmts := c.Measure(func() {
		c.TraceQueryStart(ctx, nil, pgx.TraceQueryStartData{SQL: "begin"})
		c.TraceQueryStart(ctx, nil, pgx.TraceQueryStartData{SQL: "commit"})
	})
	require.Equal(t, 2, n)
	require.Equal(t, []string{"begin", "commit"}, stmts)
	c.Reset()
	require.Zero(t, c.Count())
}
