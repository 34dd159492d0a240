package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"
)

// Environment variables read by pgtest. The first four override the Config
// field of the same meaning; see Config for the precedence.
const (
	EnvDatabaseURL = "TEST_DATABASE_URL"      // DSN of a server to use (Config.DatabaseURL)
	EnvRequired    = "TEST_DATABASE_REQUIRED" // "1": no server is a failure, not a skip (Config.Required)
	EnvImage       = "TEST_POSTGRES_IMAGE"    // container image (Config.Image)
	EnvNetwork     = "TEST_POSTGRES_NETWORK"  // "host" or "bridge" (Config.Network)
	EnvReport      = "PGTEST_REPORT"          // file to append "<package dir>\t<server>" to
)

// DefaultImage is the image the container path runs when neither
// Config.Image nor TEST_POSTGRES_IMAGE names one.
const DefaultImage = "postgres:16-alpine"

// ContainerLabel marks every container pgtest starts, so that a CI script can
// remove any a crashed test binary left behind.
const ContainerLabel = "org.effectonce.pgtest"

const readyLine = "database system is ready to accept connections"

// stopTimeout is how long a container's PostgreSQL gets to stop before it is
// killed: its data is thrown away anyway.
const stopTimeout = 2 * time.Second

// SkipMessage is the one line a test is skipped with when no server is
// available. When a server is required, the test fails with it instead.
const SkipMessage = "pgtest: no PostgreSQL server: set TEST_DATABASE_URL " +
	"(e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable) or run a Docker engine " +
	"for testcontainers; TEST_DATABASE_REQUIRED=1 or pgtest.Config{Required: true} makes this a failure"

type server struct {
	dsn       string                          // base DSN, no schema isolation
	source    string                          // human-readable description of the source
	admin     *pgxpool.Pool                   // shared pool for creating and dropping schemas
	terminate func(ctx context.Context) error // stops the container, if any
	err       error                           // configured source is broken
	skip      string                          // no source available: why (detail)
	required  string                          // what makes skip a failure; empty: nothing
}

var (
	mainCalled atomic.Bool
	codeConfig atomic.Pointer[Config] // set by MainWithConfig
	srvOnce    sync.Once
	srv        atomic.Pointer[server]
	logOnce    sync.Once
	stopOnce   sync.Once
)

// Main runs the package's tests and then stops the PostgreSQL container
// pgtest may have started for them, and exits with the tests' status. Call
// it, or MainWithConfig, from TestMain in every package that uses pgtest:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Without it, pgtest still uses a server named by TEST_DATABASE_URL, but
// refuses to start a container it could not stop.
func Main(m *testing.M) { MainWithConfig(m, nil) }

// MainWithConfig is Main with settings made in code; see Config for how
// they combine with the environment. A nil cfg is Main. An invalid cfg
// (an unknown Network) ends the binary with status 2 before any test runs.
//
//	func TestMain(m *testing.M) {
//		pgtest.MainWithConfig(m, &pgtest.Config{Required: os.Getenv("CI") != ""})
//	}
func MainWithConfig(m *testing.M, cfg *Config) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if err := c.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		os.Exit(2)
	}
	codeConfig.Store(&c)
	mainCalled.Store(true)

	// An interrupted test binary should not leave its container behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		if _, ok := <-sigs; ok {
			// Tests may still hold connections: do not wait for them.
			_ = shutdown(false)
			os.Exit(130)
		}
	}()

	code := m.Run()
	signal.Stop(sigs)
	close(sigs)
	// Skip messages are only shown with -v; say it once anyway (go test
	// shows a passing package's output in local directory mode).
	if s := srv.Load(); s != nil && s.skip != "" && !testing.Verbose() {
		fmt.Fprintln(os.Stderr, SkipMessage)
	}
	if err := shutdown(true); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// shutdown closes the shared admin pool (if closeAdmin) and terminates the
// container, once.
func shutdown(closeAdmin bool) error {
	var err error
	stopOnce.Do(func() {
		s := srv.Load()
		if s == nil {
			return
		}
		if closeAdmin && s.admin != nil {
			s.admin.Close()
		}
		if s.terminate != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if e := s.terminate(ctx); e != nil {
				err = fmt.Errorf("terminate PostgreSQL container: %w", e)
			}
		}
	})
	return err
}

// getServer returns the binary's server, skipping or failing t when there is
// none.
func getServer(t testing.TB) *server {
	t.Helper()
	srvOnce.Do(func() { srv.Store(resolve()) })
	s := srv.Load()
	s.check(t)
	first := false
	logOnce.Do(func() { first = true })
	if first {
		t.Logf("pgtest: using %s", s.source)
		report(s.source)
	}
	return s
}

// check fails t when the configured server is broken, and skips it, or
// fails it when a server is required, when there is none.
func (s *server) check(t testing.TB) {
	t.Helper()
	switch {
	case s.err != nil:
		t.Fatalf("pgtest: %v", s.err)
	case s.skip != "" && s.required != "":
		t.Logf("pgtest: %s", s.skip)
		t.Fatalf("%s (required by %s)", SkipMessage, s.required)
	case s.skip != "":
		t.Skip(SkipMessage)
	}
}

// report appends the source to the file PGTEST_REPORT names, if any.
func report(source string) {
	path := os.Getenv(EnvReport)
	if path == "" {
		return
	}
	dir, _ := os.Getwd()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: report: %v\n", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s\t%s\n", dir, source)
}

// resolve picks the server for this binary from the code configuration and
// the environment.
func resolve() *server {
	var c Config
	if p := codeConfig.Load(); p != nil {
		c = *p
	}
	st, err := resolveSettings(c, os.Getenv)
	if err != nil {
		return &server{err: err}
	}
	s := resolveServer(st)
	s.required = st.required
	return s
}

// resolveServer picks the server: the DSN, else a container on a reachable
// Docker engine, else none.
func resolveServer(st settings) *server {
	if st.dsn != "" {
		s := &server{dsn: st.dsn, source: st.dsnFrom + " (" + describeDSN(st.dsn) + ")"}
		if err := s.connectAdmin(); err != nil {
			return &server{err: fmt.Errorf("%s is set but unusable: %w", st.dsnFrom, err)}
		}
		return s
	}

	if ok, detail := engineReachable(); !ok {
		return &server{skip: "no Docker engine: " + detail}
	}
	if !mainCalled.Load() {
		return &server{err: errors.New("a Docker engine is reachable but this package's TestMain does not call " +
			"pgtest.Main, so a container could not be terminated: add `func TestMain(m *testing.M) { pgtest.Main(m) }`")}
	}

	s, err := startContainer(st.image, st.host)
	if err != nil {
		return &server{err: err}
	}
	if err := s.connectAdmin(); err != nil {
		if s.terminate != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = s.terminate(ctx)
			cancel()
		}
		return &server{err: fmt.Errorf("connect to container: %w", err)}
	}
	return s
}

// connectAdmin opens the shared admin pool and checks the server answers.
func (s *server) connectAdmin() error {
	cfg, err := pgxpool.ParseConfig(s.dsn)
	if err != nil {
		return err
	}
	cfg.MaxConns = 4
	cfg.MinConns = 0
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgtest-admin"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return err
	}
	s.admin = pool
	return nil
}

// describeDSN names host, port and database of a DSN without its password.
func describeDSN(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "unparsable DSN"
	}
	return fmt.Sprintf("%s:%d, database %s, user %s", cfg.Host, cfg.Port, cfg.Database, cfg.User)
}

// engineReachable reports whether a Docker engine answers, quickly. When
// DOCKER_HOST is set, only that engine counts; otherwise testcontainers'
// own discovery decides.
func engineReachable() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if host := os.Getenv("DOCKER_HOST"); host != "" {
		if path, ok := strings.CutPrefix(host, "unix://"); ok {
			if _, err := os.Stat(path); err != nil {
				return false, fmt.Sprintf("DOCKER_HOST=%s: %v", host, err)
			}
		}
		cli, err := client.New(client.FromEnv)
		if err != nil {
			return false, fmt.Sprintf("DOCKER_HOST=%s: %v", host, err)
		}
		defer cli.Close()
		if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
			return false, fmt.Sprintf("DOCKER_HOST=%s: %v", host, err)
		}
		return true, host
	}

	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return false, firstLine(err.Error())
	}
	defer cli.Close()
	return true, cli.DaemonHost()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// startContainer starts PostgreSQL through testcontainers.
func startContainer(image string, host bool) (*server, error) {
	if !host {
		return startBridged(image)
	}
	if err := localImageOnly(image); err != nil {
		return nil, err
	}
	var errs []error
	// A free port can be taken by another test binary between our probe and
	// PostgreSQL's bind; try a few ports.
	for attempt := 0; attempt < 3; attempt++ {
		s, err := startOnHost(image)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// localImageOnly refuses to let testcontainers pull an effectonce/... image:
// those are built from a machine's own PostgreSQL (this repository's
// scripts/build-pg-image.sh), never published.
func localImageOnly(image string) error {
	if !strings.HasPrefix(image, "effectonce/") {
		return nil
	}
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return fmt.Errorf("docker provider: %w", err)
	}
	defer provider.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := provider.Client().ImageInspect(ctx, image); err != nil {
		return fmt.Errorf("image %s is not present on the Docker engine, and effectonce/ images are built locally, never published: %w", image, err)
	}
	return nil
}

const (
	containerUser     = "postgres"
	containerPassword = "postgres"
	containerDB       = "test"
)

// startBridged runs the image through the testcontainers postgres module with
// testcontainers' default networking and a mapped port.
func startBridged(image string) (*server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	began := time.Now()
	ctr, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase(containerDB),
		tcpostgres.WithUsername(containerUser),
		tcpostgres.WithPassword(containerPassword),
		testcontainers.WithLabels(map[string]string{ContainerLabel: "1"}),
		testcontainers.WithWaitStrategy(
			wait.ForLog(readyLine).WithStartupTimeout(3*time.Minute),
			wait.ForListeningPort("5432/tcp").SkipInternalCheck().WithStartupTimeout(time.Minute),
		),
	)
	if err != nil {
		if ctr != nil {
			_ = ctr.Terminate(context.Background(), testcontainers.StopTimeout(stopTimeout))
		}
		return nil, fmt.Errorf("start container from %s: %w", image, err)
	}
	terminate := func(ctx context.Context) error { return ctr.Terminate(ctx, testcontainers.StopTimeout(stopTimeout)) }
	dsn, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err == nil {
		err = waitConnectable(ctx, dsn)
	}
	if err != nil {
		_ = terminate(context.Background())
		return nil, fmt.Errorf("container from %s: %w", image, err)
	}
	return &server{
		dsn:       dsn,
		source:    fmt.Sprintf("testcontainers image %s on %s (started in %s)", image, hostPort(dsn), time.Since(began).Round(time.Millisecond)),
		terminate: terminate,
	}, nil
}

// startOnHost runs the image on the host network, PostgreSQL listening on a
// free loopback port: no bridge, no port mapping, no traffic off 127.0.0.1.
func startOnHost(image string) (*server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	began := time.Now()

	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ps := strconv.Itoa(port)

	req := testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{Image: image},
		Started:          true,
	}
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithEnv(map[string]string{
			"POSTGRES_USER":     containerUser,
			"POSTGRES_PASSWORD": containerPassword,
			"POSTGRES_DB":       containerDB,
			"PGPORT":            ps,
		}),
		// The same command the postgres module uses, plus the port and a
		// loopback-only listen address (the official image listens on '*').
		testcontainers.WithCmd("postgres", "-c", "fsync=off", "-c", "listen_addresses=127.0.0.1", "-p", ps),
		testcontainers.WithLabels(map[string]string{ContainerLabel: "1"}),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.NetworkMode = "host"
		}),
		testcontainers.WithEndpointSettingsModifier(func(m map[string]*network.EndpointSettings) {
			clear(m)
		}),
		// Wait for one ready line (images that initialise through a
		// temporary server print two; the connect loop below covers that).
		testcontainers.WithWaitStrategy(wait.ForLog(readyLine).WithStartupTimeout(3 * time.Minute)),
	}
	for _, o := range opts {
		if err := o.Customize(&req); err != nil {
			return nil, err
		}
	}

	// The provider's default network is "host", so testcontainers attaches
	// no bridge network of its own (and creates none).
	provider, err := testcontainers.NewDockerProvider(testcontainers.WithDefaultBridgeNetwork("host"))
	if err != nil {
		return nil, fmt.Errorf("docker provider: %w", err)
	}
	defer provider.Close()

	ctr, err := provider.RunContainer(ctx, req.ContainerRequest)
	terminate := func(ctx context.Context) error {
		if ctr == nil {
			return nil
		}
		return ctr.Terminate(ctx, testcontainers.StopTimeout(stopTimeout))
	}
	if err != nil {
		_ = terminate(context.Background())
		hint := ""
		if !strings.EqualFold(os.Getenv("TESTCONTAINERS_RYUK_DISABLED"), "true") {
			hint = " (set TESTCONTAINERS_RYUK_DISABLED=true where the reaper image cannot be pulled)"
		}
		return nil, fmt.Errorf("start container from %s on 127.0.0.1:%d: %w%s", image, port, err, hint)
	}

	dsn := (&url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(containerUser, containerPassword),
		Host:     net.JoinHostPort("127.0.0.1", ps),
		Path:     "/" + containerDB,
		RawQuery: "sslmode=disable",
	}).String()
	if err := waitConnectable(ctx, dsn); err != nil {
		_ = terminate(context.Background())
		return nil, fmt.Errorf("container from %s on 127.0.0.1:%d: %w", image, port, err)
	}
	return &server{
		dsn:       dsn,
		source:    fmt.Sprintf("testcontainers image %s on 127.0.0.1:%d, host network (started in %s)", image, port, time.Since(began).Round(time.Millisecond)),
		terminate: terminate,
	}, nil
}

// waitConnectable retries connecting until the server answers a query.
func waitConnectable(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, dsn)
		if err == nil {
			_, err = conn.Exec(cctx, "SELECT 1")
			_ = conn.Close(cctx)
		}
		ccancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("server not connectable: %w", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func hostPort(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "?"
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}
