// Command effectonce operates the effectonce ledger, a pgguard table in
// PostgreSQL: it lists stuck records, shows a key's records with their
// evidence, settles and revokes records by hand, migrates the table, and
// prunes old finished records.
//
//	go install github.com/effectonce/effectonce/cmd/effectonce@latest
//
// Usage:
//
//	effectonce [flags] <command> [arguments] [flags]
//
//	stuck                        list the records nobody will finish on their own
//	show KEY                     print a key's records, their history and evidence
//	settle KEY --status S        resolve a pending record by hand (applied needs --result JSON;
//	                             --token T fences on the token you saw; --force overrides a live claim)
//	revoke KEY --reason R        mark an applied or skipped record revoked, freeing the key
//	migrate                      create or upgrade the ledger table
//	prune --namespace N --older-than D [--dry-run]
//	                             delete a namespace's old finished records, in batches
//	help [COMMAND]               usage
//
// Every command takes --dsn (default $DATABASE_URL), --schema, --table
// (default effect_ledger), -o text|json and --show-keys, before or after
// the command. The output is for people by default; -o json prints one JSON
// document for scripts. Keys built in HMAC mode print as
// "<namespace>:<hmac>", as the library logs them, unless --show-keys.
// Errors go to standard error as one line.
//
// Exit codes:
//
//	0  done
//	1  failure: the database, the DSN, or the ledger table (missing, or at an old version)
//	2  usage: an unknown command, a bad flag or argument
//	3  settle refused: a live claim holds the record (--force settles it anyway)
//	4  not found: the key has no record (or no active one, for settle and revoke)
//	5  changed: the record changed since it was read (a stale --token), or its
//	   state does not allow the change (settling an applied record, revoking a
//	   pending one)
//
// docs/operations.md describes each command with an example session, the
// JSON shapes, and when pruning is safe.
package main
