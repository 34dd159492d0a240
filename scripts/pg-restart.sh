#!/usr/bin/env bash
# pg-restart.sh CMD ARGS...: run a PostgreSQL restart command with every file
# descriptor above 2 closed, so the new postmaster inherits nothing from the
# test run that asked for the restart (a lock, a pipe a harness waits on).
set -u
for fd in /proc/$$/fd/*; do
	n=${fd##*/}
	if [[ $n =~ ^[0-9]+$ ]] && ((n > 2)); then
		eval "exec $n>&-" 2>/dev/null || true
	fi
done
exec "$@" </dev/null
