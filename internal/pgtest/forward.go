// Package pgtest forwards to the public package
// github.com/effectonce/effectonce/pgtest, under the names this repository's
// tests already use. It exists so that those tests keep compiling until
// their imports name the public package; new code should import that one.
package pgtest

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effectonce/effectonce/pgtest"
)

// Constants of the public package, under their old names.
const (
	DefaultMaxConns = pgtest.DefaultMaxConns
	DefaultImage    = pgtest.DefaultImage
	ContainerLabel  = pgtest.ContainerLabel
	SkipMessage     = pgtest.SkipMessage

	EnvDatabaseURL = pgtest.EnvDatabaseURL
	EnvRequired    = pgtest.EnvRequired
	EnvImage       = pgtest.EnvImage
	EnvNetwork     = pgtest.EnvNetwork
	EnvReport      = pgtest.EnvReport
)

// Main is pgtest.Main.
func Main(m *testing.M) { pgtest.Main(m) }

// Pool is pgtest.Pool.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return pgtest.Pool(t)
}

// Schema is pgtest.Schema.
func Schema(t testing.TB) (pool *pgxpool.Pool, schema string) {
	t.Helper()
	return pgtest.Schema(t)
}

// PoolWithConfig is pgtest.PoolWithConfig.
func PoolWithConfig(t testing.TB, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	return pgtest.PoolWithConfig(t, configure)
}

// ConnString is pgtest.ConnString.
func ConnString(t testing.TB) string {
	t.Helper()
	return pgtest.ConnString(t)
}

// AdminPool is pgtest.AdminPool.
func AdminPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return pgtest.AdminPool(t)
}
