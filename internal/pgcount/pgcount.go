// Package pgcount counts the SQL statements a pgx connection sends, so tests
// can assert round trips deterministically ("a repeat costs 1 statement")
// instead of timing them.
//
//	var c pgcount.StatementCounter
//	pool := pgtest.PoolWithConfig(t, c.Configure)
//	c.Reset()
//	doSomething(pool)
//	require.Equal(t, 1, c.Count())
//
// Every statement that goes through pgx's query path is counted: Exec,
// Query and QueryRow, including the BEGIN, COMMIT, SAVEPOINT and RELEASE
// that pgx.Tx sends. Not counted: the Parse/Describe round trip pgx adds the
// first time a connection prepares a statement (QueryExecModeCacheStatement),
// batches, COPY, and the pool's own health checks.
package pgcount

import (
	"context"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// StatementCounter is a pgx.QueryTracer that records every statement. The
// zero value is ready to use and it is safe for concurrent use.
type StatementCounter struct {
	mu    sync.Mutex
	stmts []string
}

var _ pgx.QueryTracer = (*StatementCounter)(nil)

// Configure installs c as the tracer of cfg's connections, replacing any
// other tracer. Its signature fits pgtest.PoolWithConfig.
func (c *StatementCounter) Configure(cfg *pgxpool.Config) { cfg.ConnConfig.Tracer = c }

// TraceQueryStart implements pgx.QueryTracer.
func (c *StatementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	c.mu.Lock()
	c.stmts = append(c.stmts, data.SQL)
	c.mu.Unlock()
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer.
func (c *StatementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Count returns the number of statements since the last Reset.
func (c *StatementCounter) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.stmts)
}

// Statements returns the SQL of the statements since the last Reset, in the
// order they started.
func (c *StatementCounter) Statements() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.stmts...)
}

// Reset forgets the statements counted so far.
func (c *StatementCounter) Reset() {
	c.mu.Lock()
	c.stmts = nil
	c.mu.Unlock()
}

// Measure resets c, runs fn and returns the number of statements it sent,
// with their SQL.
func (c *StatementCounter) Measure(fn func()) (int, []string) {
	c.Reset()
	fn()
	s := c.Statements()
	return len(s), s
}
