package main

import (
	"bytes"
	"flag"
	"fmt"
	"strings"
)

const exitCodesText = `Exit codes:
  0  done
  1  failure: the database, the DSN, or the ledger table (missing, or at an old version)
  2  usage: an unknown command, a bad flag or argument
  3  settle refused: a live claim holds the record (--force settles it anyway)
  4  not found: the key has no record (or no active one, for settle and revoke)
  5  changed: the record changed since it was read (a stale --token), or its state does not allow the change
`

const commonFlagsText = `Flags every command takes (before or after the command):
  --dsn DSN        PostgreSQL connection string (URL or key=value); default $DATABASE_URL
  --schema NAME    schema of the ledger table; default: the connection's search_path
  --table NAME     ledger table name; default effect_ledger
  -o text|json     output format; json is for scripts (see docs/operations.md for its shape)
  --show-keys      print HMAC keys in full; by default an HMAC key shows as <namespace>:<hmac>
`

var commonFlags = map[string]bool{"dsn": true, "schema": true, "table": true, "o": true, "show-keys": true}

func mainUsage() string {
	var b strings.Builder
	b.WriteString(`effectonce operates the effectonce ledger in PostgreSQL: it lists stuck
records, shows a key's history and evidence, settles and revokes records by
hand, migrates the table and prunes old finished records.

Usage:
  effectonce [flags] <command> [arguments] [flags]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-8s %-4s  %s\n", c.name, c.args, c.short)
	}
	b.WriteString("  help     CMD   the flags of a command\n\n")
	b.WriteString(commonFlagsText)
	b.WriteString("\n")
	b.WriteString(exitCodesText)
	return b.String()
}

func commandUsage(c *command, fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: effectonce %s", c.name)
	if c.args != "" {
		b.WriteString(" " + c.args)
	}
	b.WriteString(" [flags]\n\n" + c.long + "\n\n")
	var own bytes.Buffer
	fs.VisitAll(func(f *flag.Flag) {
		if commonFlags[f.Name] {
			return
		}
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&own, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(&own, " %s", name)
		}
		fmt.Fprintf(&own, "\n        %s", usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			fmt.Fprintf(&own, " (default %s)", f.DefValue)
		}
		own.WriteString("\n")
	})
	if own.Len() > 0 {
		b.WriteString("Flags:\n")
		b.Write(own.Bytes())
		b.WriteString("\n")
	}
	b.WriteString(commonFlagsText + "\n" + exitCodesText)
	return b.String()
}
