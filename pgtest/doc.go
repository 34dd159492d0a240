// Package pgtest gives each PostgreSQL test a pool on a fresh schema of its
// own, on a real server: the one TEST_DATABASE_URL names, else one started in
// a container through testcontainers-go, else the test is skipped.
//
// Hand the test binary to pgtest from TestMain, once per package, and ask
// for a pool in each test:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		pool := pgtest.Pool(t)
//		// CREATE TABLE, INSERT, ...: all in this test's schema.
//	}
//
// The pool's connections have search_path set to a newly created, uniquely
// named schema and nothing else, so unqualified names land in that schema,
// and a bare name that is not there (another test's table, a table in
// public) is an error rather than someone else's data. Tests on their own
// schemas can run in parallel on one server. When the test ends, the pool is
// closed, backends still connected to the schema are terminated, and the
// schema is dropped with CASCADE.
//
// Schema also returns the schema's name, PoolWithConfig lets the test change
// the pool's configuration (size, tracers, AfterConnect) before it opens,
// ConnString gives a DSN on a fresh schema for code that opens its own
// connections, and AdminPool is a pool on the server without isolation.
// pgtest does not know about any schema of yours: migrate in the test, on
// the pool it gets.
//
// # Where the server comes from
//
// The server is chosen once per test binary, by the first test that asks
// for one:
//
//  1. A DSN (a libpq URL or keyword/value string) in TEST_DATABASE_URL, or in
//     Config.DatabaseURL: that server. The user needs to be allowed to
//     create schemas, and to terminate the backends of its own tests.
//  2. Otherwise, if a Docker engine answers, a PostgreSQL container started
//     through testcontainers-go's postgres module, from DefaultImage
//     (postgres:16-alpine) or the image TEST_POSTGRES_IMAGE or Config.Image
//     names. Main stops it when the package's tests are done, which is why
//     pgtest refuses to start one for a package whose TestMain does not
//     call Main or MainWithConfig. The image must be on the engine or
//     pullable from its registry. If DOCKER_HOST is set, only that engine is
//     considered.
//  3. Otherwise each test that asks for a server is skipped with SkipMessage,
//     one line naming both ways to get one. Required (Config.Required, or
//     TEST_DATABASE_REQUIRED=1) turns the skip into a failure, so CI cannot
//     pass by skipping.
//
// A DSN that is set but unusable, or a container that will not start, fails
// the tests instead of skipping them.
//
// Settings can be made in code, through MainWithConfig and Config, and in
// the environment; the environment wins field by field, and Required is on
// when either turns it on (see Config).
//
// # Running containers
//
// TEST_POSTGRES_NETWORK=host (or Config.Network "host") runs the container
// on the host network, its PostgreSQL listening on a free port of 127.0.0.1,
// for engines without a usable bridge network. Where testcontainers' reaper
// image cannot be pulled, set TESTCONTAINERS_RYUK_DISABLED=true: Main stops
// the container itself, also on an interrupt. When the tests run inside a
// container of their own, set TESTCONTAINERS_HOST_OVERRIDE to the host that
// reaches the engine's published ports (localhost with host networking).
// Every container carries the label ContainerLabel, so a CI script can
// remove those a killed test binary left behind.
//
// # Which server ran
//
// The first test to get a server logs its source ("pgtest: using ...",
// shown with go test -v). If PGTEST_REPORT names a file, the same source is
// appended to it as "<package directory>\t<source>", so a CI script can show
// which packages ran against which server.
package pgtest
