# shellcheck shell=bash
# Helpers shared by scripts/test.sh and .ci/run. Source this file; do not run it.

EFFECTONCE_STATE=${EFFECTONCE_STATE:-/tmp/effectonce-ci}
export EFFECTONCE_STATE
mkdir -p "$EFFECTONCE_STATE"

EFFECTONCE_DEFAULT_DSN='postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
EFFECTONCE_LOCAL_IMAGE=effectonce/postgres:local
STRIPE_MOCK_VERSION=v0.183.0

say() { printf '%s\n' "$*"; }
loud() { printf '\n!!!!!!!!!! %s !!!!!!!!!!\n\n' "$*"; }

# The newest PostgreSQL bin directory on this machine, or nothing.
pg_bindir() {
	local v
	v=$(ls -1 /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
	[[ -n $v && -x /usr/lib/postgresql/$v/bin/postgres ]] && echo "/usr/lib/postgresql/$v/bin"
	return 0
}

docker_answers() {
	command -v docker >/dev/null 2>&1 && timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# ensure_local_pg [--install]: PostgreSQL answers on 127.0.0.1:5432 with trust
# auth and a database "test" afterwards, or return 1. Starts the machine's
# cluster when it is down; where only binaries exist, makes a cluster of its
# own under $EFFECTONCE_STATE; with --install, installs postgresql-15 first
# when even those are missing.
ensure_local_pg() {
	local bin
	bin=$(pg_bindir)
	if [[ -z $bin ]]; then
		if [[ ${1:-} != --install ]]; then
			say "no PostgreSQL binaries on this machine"
			return 1
		fi
		say "installing postgresql-15"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$EFFECTONCE_STATE/apt-pg.log" 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >>"$EFFECTONCE_STATE/apt-pg.log" 2>&1 ||
			{ say "installing postgresql-15 failed (see $EFFECTONCE_STATE/apt-pg.log)"; return 1; }
		bin=$(pg_bindir)
		[[ -n $bin ]] || return 1
	fi

	if ! "$bin/pg_isready" -q -h 127.0.0.1 -p 5432; then
		local v
		v=$(basename "$(dirname "$bin")")
		if [[ -d /etc/postgresql/$v/main ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
			say "starting PostgreSQL cluster $v/main"
			pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
		else
			# Only binaries: a trust-auth cluster of our own on 127.0.0.1:5432.
			local data=$EFFECTONCE_STATE/pgdata
			local as=()
			if [[ $(id -u) == 0 ]]; then
				as=(runuser -u postgres --)
				id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
				mkdir -p "$data"
				chown postgres: "$data"
			fi
			if [[ ! -s $data/PG_VERSION ]]; then
				say "creating a trust-auth cluster in $data"
				"${as[@]}" "$bin/initdb" --auth=trust --locale=C -E UTF8 -U postgres -D "$data" >/dev/null
			fi
			say "starting PostgreSQL from $data on 127.0.0.1:5432"
			"${as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
				-o "-c listen_addresses=127.0.0.1 -p 5432 -k /tmp" start >/dev/null
		fi
		for _ in $(seq 1 100); do
			"$bin/pg_isready" -q -h 127.0.0.1 -p 5432 && break
			sleep 0.2
		done
		"$bin/pg_isready" -q -h 127.0.0.1 -p 5432 || { say "PostgreSQL does not answer on 127.0.0.1:5432"; return 1; }
	fi

	if ! "$bin/psql" -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
		say "creating database test"
		"$bin/psql" -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null || return 1
	fi
}

# start_stripe_mock: install stripe-mock if needed, start it on free loopback
# ports and export STRIPE_MOCK_URL and TEST_STRIPE_MOCK_REQUIRED=1. On failure
# say so loudly, export neither, and return 1. stop_stripe_mock ends it.
STRIPE_MOCK_PID=
start_stripe_mock() {
	local bin
	bin=$(command -v stripe-mock || true)
	[[ -n $bin ]] || bin="$(go env GOPATH)/bin/stripe-mock"
	if [[ ! -x $bin ]]; then
		say "installing stripe-mock $STRIPE_MOCK_VERSION"
		if ! GOFLAGS= go install "github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION" >"$EFFECTONCE_STATE/stripe-mock-install.log" 2>&1; then
			loud "stripe-mock could NOT be installed (see $EFFECTONCE_STATE/stripe-mock-install.log): tests against stripe-mock will skip"
			return 1
		fi
	fi
	local logf=$EFFECTONCE_STATE/stripe-mock.$$.log
	# Port 0: the kernel picks free ports; stripe-mock prints the address.
	"$bin" -http-addr 127.0.0.1:0 -https-addr 127.0.0.1:0 >"$logf" 2>&1 &
	STRIPE_MOCK_PID=$!
	local addr=
	for _ in $(seq 1 150); do
		addr=$(sed -n 's/^Listening for HTTP at address: \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$logf" | head -n 1)
		[[ -n $addr ]] && break
		kill -0 "$STRIPE_MOCK_PID" 2>/dev/null || break
		sleep 0.1
	done
	if [[ -z $addr ]]; then
		loud "stripe-mock did NOT start (see $logf): tests against stripe-mock will skip"
		stop_stripe_mock
		return 1
	fi
	export STRIPE_MOCK_URL=http://$addr
	export TEST_STRIPE_MOCK_REQUIRED=1
	say "stripe-mock $STRIPE_MOCK_VERSION (pid $STRIPE_MOCK_PID) at $STRIPE_MOCK_URL"
}

stop_stripe_mock() {
	if [[ -n $STRIPE_MOCK_PID ]]; then
		kill "$STRIPE_MOCK_PID" 2>/dev/null || true
		wait "$STRIPE_MOCK_PID" 2>/dev/null || true
		rm -f "$EFFECTONCE_STATE/stripe-mock.$$.log"
		STRIPE_MOCK_PID=
	fi
}
