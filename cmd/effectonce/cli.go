package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effectonce/effectonce/pgguard"
)

// Exit codes, documented in doc.go and in the usage text.
const (
	exitOK       = 0 // done
	exitFailure  = 1 // the database failed, or the DSN or the ledger table is wrong
	exitUsage    = 2 // bad command line
	exitLive     = 3 // settle refused: a live claim holds the record (--force overrides)
	exitNotFound = 4 // no such record
	exitChanged  = 5 // the record changed since it was read (a stale --token), or is in a state the command cannot change
)

// exitError is an error with the exit code it means.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func fail(code int, format string, a ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, a...)}
}

// run is the whole command: it parses args (without the program name),
// writes results to stdout and errors to stderr, reads the environment
// through getenv, and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	err := dispatch(ctx, args, stdout, getenv)
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	code := exitFailure
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	// One line, whatever the cause looks like (pgx joins the errors of
	// several hosts with newlines).
	msg := strings.Join(strings.Fields(err.Error()), " ")
	fmt.Fprintln(stderr, "effectonce: "+msg)
	if code == exitUsage {
		fmt.Fprintln(stderr, "Run 'effectonce help' for usage.")
	}
	return code
}

type command struct {
	name, args, short string
	long              string // more detail, after the synopsis
	flags             func(fs *flag.FlagSet, o *options) func(ctx context.Context, l *ledger, pos []string) error
	positional        int  // how many positional arguments it takes
	noLedger          bool // migrate: the table need not exist yet
}

var commands []*command // filled in commands.go's init, in display order

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func dispatch(ctx context.Context, args []string, stdout io.Writer, getenv func(string) string) error {
	var o options
	global := flag.NewFlagSet("effectonce", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	o.register(global)
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, mainUsage())
			return err
		}
		return fail(exitUsage, "%v", err)
	}
	rest := global.Args()
	if len(rest) == 0 {
		fmt.Fprint(stdout, mainUsage())
		return fail(exitUsage, "no command")
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		if len(rest) == 0 {
			fmt.Fprint(stdout, mainUsage())
			return nil
		}
		c := findCommand(rest[0])
		if c == nil {
			return fail(exitUsage, "unknown command %q", rest[0])
		}
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		o.register(fs)
		c.flags(fs, &o)
		fmt.Fprint(stdout, commandUsage(c, fs))
		return nil
	}
	c := findCommand(name)
	if c == nil {
		return fail(exitUsage, "unknown command %q", name)
	}
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.register(fs)
	do := c.flags(fs, &o)
	pos, err := parseInterleaved(fs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, commandUsage(c, fs))
			return err
		}
		return fail(exitUsage, "%s: %v", c.name, err)
	}
	if len(pos) != c.positional {
		if c.positional == 0 {
			return fail(exitUsage, "%s takes no arguments, got %q", c.name, pos)
		}
		return fail(exitUsage, "%s needs %s", c.name, c.args)
	}
	if o.output != "text" && o.output != "json" {
		return fail(exitUsage, "-o %q: want text or json", o.output)
	}
	l, err := o.open(ctx, getenv, !c.noLedger)
	if err != nil {
		return err
	}
	defer l.close()
	l.out = stdout
	return do(ctx, l, pos)
}

// parseInterleaved parses flags anywhere among the arguments (the flag
// package stops at the first positional one), so that "settle KEY --status
// failed" works. Everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// options are the flags every command takes.
type options struct {
	dsn, schema, table string
	output             string
	showKeys           bool
}

func (o *options) register(fs *flag.FlagSet) {
	if o.output == "" {
		o.output = "text"
	}
	// The current values are the defaults, so flags given before the
	// command carry over to the command's own flag set.
	fs.StringVar(&o.dsn, "dsn", o.dsn, "PostgreSQL connection string (URL or key=value); default $DATABASE_URL")
	fs.StringVar(&o.schema, "schema", o.schema, "schema of the ledger table; default: the connection's search_path")
	fs.StringVar(&o.table, "table", o.table, "ledger table name; default "+pgguard.DefaultTable)
	fs.StringVar(&o.output, "o", o.output, "output format: text or json")
	fs.BoolVar(&o.showKeys, "show-keys", o.showKeys, "show HMAC keys in full (by default only their namespace)")
}

// ledger is an open connection to the ledger.
type ledger struct {
	conn     *pgx.Conn
	store    *pgguard.Store
	cfg      *pgguard.Config
	name     string    // the table as the messages show it
	now      time.Time // the database's clock when the command started
	out      io.Writer
	json     bool
	showKeys bool
}

func (l *ledger) close() { _ = l.conn.Close(context.WithoutCancel(context.Background())) }

// connectTimeout bounds the connection attempt when the DSN sets none.
const connectTimeout = 10 * time.Second

func (o *options) open(ctx context.Context, getenv func(string) string, needLedger bool) (*ledger, error) {
	cfg := &pgguard.Config{Schema: o.schema, Table: o.table}
	dsn, from := o.dsn, "--dsn"
	if dsn == "" {
		dsn, from = getenv("DATABASE_URL"), "DATABASE_URL"
	}
	if dsn == "" {
		return nil, fail(exitUsage, "no database: pass --dsn or set DATABASE_URL")
	}
	pcfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx redacts the password from the connection string it quotes.
		return nil, fail(exitFailure, "invalid DSN in %s: %v", from, err)
	}
	if pcfg.ConnectTimeout == 0 {
		pcfg.ConnectTimeout = connectTimeout
	}
	conn, err := pgx.ConnectConfig(ctx, pcfg)
	if err != nil {
		return nil, fail(exitFailure, "cannot connect to the database (DSN from %s): %v", from, err)
	}
	store, err := pgguard.New(conn, cfg)
	if err != nil {
		// An *IdentifierError: the --schema or --table value.
		_ = conn.Close(ctx)
		return nil, fail(exitUsage, "%v", err)
	}
	l := &ledger{conn: conn, store: store, cfg: cfg, name: tableName(cfg), json: o.output == "json", showKeys: o.showKeys}
	var exists, hasState bool
	var searchPath string
	err = conn.QueryRow(ctx, `SELECT clock_timestamp(), to_regclass($1::text) IS NOT NULL,
	EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass($1::text) AND attname = 'state' AND NOT attisdropped),
	current_setting('search_path')`, qualified(cfg, cfg.Table)).Scan(&l.now, &exists, &hasState, &searchPath)
	if err != nil {
		l.close()
		return nil, fail(exitFailure, "inspect the ledger table %s: %v", l.name, err)
	}
	if needLedger {
		where := ""
		if cfg.Schema == "" {
			where = fmt.Sprintf(" on the search_path (%s)", searchPath)
		}
		switch {
		case !exists:
			l.close()
			return nil, fail(exitFailure, "ledger table %s not found%s: check --schema and --table, or create it with 'effectonce migrate'", l.name, where)
		case !hasState:
			l.close()
			return nil, fail(exitFailure, "ledger table %s is at version 1: upgrade it with 'effectonce migrate'", l.name)
		}
	}
	return l, nil
}

// tableName is the configured table as messages show it, quoted.
func tableName(cfg *pgguard.Config) string { return qualified(cfg, cfg.Table) }

// qualified quotes name, in the configured schema if any.
func qualified(cfg *pgguard.Config, name string) string {
	if name == "" {
		name = pgguard.DefaultTable
	}
	if cfg.Schema == "" {
		return pgx.Identifier{name}.Sanitize()
	}
	return pgx.Identifier{cfg.Schema, name}.Sanitize()
}
