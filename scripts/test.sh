#!/usr/bin/env bash
# The project's test command:
#
#   bash scripts/test.sh                  make sure a PostgreSQL server (and stripe-mock)
#                                         is there, then run: go test -race -count=1 ./...
#   bash scripts/test.sh -- CMD ARGS...   same set-up, then run CMD ARGS... instead
#
# Where the database comes from (EFFECTONCE_TEST_DB):
#   auto (default)  TEST_DATABASE_URL if set; else the local PostgreSQL on
#                   127.0.0.1:5432 (started if it is down); else a running
#                   Docker engine (testcontainers); else none, and the
#                   database tests skip with one line saying how to enable them.
#   dsn             TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test?sslmode=disable
#                   (the local server is started, and database "test" created, if needed).
#   container       TEST_DATABASE_URL unset; testcontainers on the Docker engine
#                   (dockerd is started if installed but not running, and
#                   stopped again afterwards), image TEST_POSTGRES_IMAGE
#                   (default effectonce/postgres:local, built when missing by
#                   scripts/build-pg-image.sh) on TEST_POSTGRES_NETWORK (default host).
# Whenever a database was arranged, TEST_DATABASE_REQUIRED defaults to 1.
#
# stripe-mock: unless STRIPE_MOCK_URL is already set or EFFECTONCE_STRIPE_MOCK=0,
# stripe-mock is installed if needed (go install), started on free loopback
# ports, and STRIPE_MOCK_URL and TEST_STRIPE_MOCK_REQUIRED=1 exported.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# The test command, defined here and nowhere else.
DEFAULT_TEST_CMD=(go test -race -count=1 ./...)

cmd=("${DEFAULT_TEST_CMD[@]}")
if [[ $# -gt 0 ]]; then
	[[ $1 == -- ]] || { echo "usage: $0 [-- CMD ARGS...]" >&2; exit 2; }
	shift
	[[ $# -gt 0 ]] && cmd=("$@")
fi

started_engine=false
cleanup() {
	stop_stripe_mock
	if $started_engine; then
		scripts/docker-engine.sh stop || true
	fi
}
trap cleanup EXIT

use_dsn() {
	if [[ -z ${TEST_DATABASE_URL:-} ]]; then
		ensure_local_pg || return 1
		export TEST_DATABASE_URL=$EFFECTONCE_DEFAULT_DSN
	fi
	export TEST_DATABASE_REQUIRED=${TEST_DATABASE_REQUIRED:-1}
	say "test.sh: database: DSN path, TEST_DATABASE_URL=${TEST_DATABASE_URL}"
}

use_container() {
	unset TEST_DATABASE_URL
	if ! docker_answers; then
		scripts/docker-engine.sh ensure || return 1
		started_engine=true
	fi
	export TEST_POSTGRES_IMAGE=${TEST_POSTGRES_IMAGE:-$EFFECTONCE_LOCAL_IMAGE}
	export TEST_POSTGRES_NETWORK=${TEST_POSTGRES_NETWORK:-host}
	export TESTCONTAINERS_RYUK_DISABLED=${TESTCONTAINERS_RYUK_DISABLED:-true}
	export TESTCONTAINERS_HOST_OVERRIDE=${TESTCONTAINERS_HOST_OVERRIDE:-localhost}
	export TEST_DATABASE_REQUIRED=${TEST_DATABASE_REQUIRED:-1}
	if [[ $TEST_POSTGRES_IMAGE == effectonce/* ]] && ! docker image inspect "$TEST_POSTGRES_IMAGE" >/dev/null 2>&1; then
		scripts/build-pg-image.sh "$TEST_POSTGRES_IMAGE" || return 1
	fi
	say "test.sh: database: testcontainers path, image $TEST_POSTGRES_IMAGE, network ${TEST_POSTGRES_NETWORK:-default}"
}

case ${EFFECTONCE_TEST_DB:-auto} in
dsn) use_dsn || { say "test.sh: no PostgreSQL for the DSN path"; exit 1; } ;;
container) use_container || { say "test.sh: no Docker engine or image for the testcontainers path"; exit 1; } ;;
auto)
	if [[ -n ${TEST_DATABASE_URL:-} ]] || ensure_local_pg; then
		use_dsn
	elif docker_answers; then
		use_container
	else
		say "test.sh: no database found: PostgreSQL tests will skip"
	fi
	;;
*) echo "EFFECTONCE_TEST_DB must be auto, dsn or container" >&2; exit 2 ;;
esac

if [[ -z ${STRIPE_MOCK_URL:-} && ${EFFECTONCE_STRIPE_MOCK:-1} != 0 ]]; then
	start_stripe_mock || true
fi

say "test.sh: running: ${cmd[*]}"
"${cmd[@]}"
