// Package pgtest gives every PostgreSQL test its own fresh schema on a real
// server.
//
// A test asks for a pool and gets one whose connections have search_path set
// to a newly created, uniquely named schema, so unqualified table names land
// in that schema and nowhere else:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		pool := pgtest.Pool(t)
//		// CREATE TABLE, INSERT, ... all land in this test's schema.
//	}
//
// When the test ends, the pool is closed, any backend still connected to the
// schema is terminated and the schema is dropped with CASCADE.
//
// # Where the server comes from
//
// The server is chosen once per test binary, lazily, by the first test that
// asks for one:
//
//  1. TEST_DATABASE_URL set: that server (a libpq URL or keyword/value DSN).
//  2. Otherwise, a reachable Docker engine: a PostgreSQL container started
//     through testcontainers-go, once per test binary, and terminated by Main
//     when the binary's tests have run. Packages that use pgtest must
//     therefore call Main from TestMain; the container path refuses to start
//     a container otherwise. TEST_POSTGRES_IMAGE names the image (default
//     postgres:16-alpine, through the testcontainers postgres module).
//     TEST_POSTGRES_NETWORK=host runs the container on the host network, its
//     PostgreSQL listening on a free port of 127.0.0.1 (never 5432); this is
//     how .ci/run runs the locally built image effectonce/postgres:local
//     (scripts/build-pg-image.sh). If DOCKER_HOST is set, only that engine
//     is considered.
//  3. Otherwise every test that asks for a server is skipped with one line
//     naming both ways to get one. TEST_DATABASE_REQUIRED=1 turns that skip
//     into a failure, so CI cannot pass by skipping.
//
// With an engine, also set TESTCONTAINERS_RYUK_DISABLED=true when the reaper
// image cannot be pulled, and TESTCONTAINERS_HOST_OVERRIDE=localhost when the
// tests themselves run inside a container (testcontainers would otherwise
// connect to the default gateway).
//
// The first test to get a server logs which source is used ("pgtest: using
// ..."). If PGTEST_REPORT names a file, that line is also appended to it,
// prefixed by the package directory, so a CI script can show which packages
// ran against which server without running go test -v.
package pgtest
