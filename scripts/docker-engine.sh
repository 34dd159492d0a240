#!/usr/bin/env bash
# Start or stop a local Docker engine for the testcontainers test path.
#
#   scripts/docker-engine.sh ensure [--install]   engine answers afterwards, or exit 1
#   scripts/docker-engine.sh stop                 stop the dockerd "ensure" started, if any
#
# "ensure" does nothing when an engine already answers. Otherwise it starts
# dockerd without a bridge, iptables or masquerading (containers then run on
# the host network only, so test traffic stays on 127.0.0.1), logging to
# $EFFECTONCE_STATE/dockerd.log. With --install it first installs Debian's
# docker.io when dockerd is missing. "stop" ends only the dockerd it started
# (by the PID it recorded) and unmounts the netns mount dockerd may leave.
set -euo pipefail

STATE=${EFFECTONCE_STATE:-/tmp/effectonce-ci}
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
SOCK=/var/run/docker.sock

log() { printf 'docker-engine: %s\n' "$*" >&2; }

answers() {
	command -v docker >/dev/null 2>&1 && timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

ensure() {
	local install=false
	[[ ${1:-} == --install ]] && install=true
	mkdir -p "$STATE"
	if answers; then
		log "engine already answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null)); not starting one"
		return 0
	fi
	if ! command -v dockerd >/dev/null 2>&1; then
		if ! $install; then
			log "no dockerd on PATH (run with --install to apt-get install docker.io)"
			return 1
		fi
		log "installing Debian's docker.io"
		local t0=$SECONDS
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >"$STATE/apt.log" 2>&1 || { log "apt-get update failed (see $STATE/apt.log)"; return 1; }
		apt-get install -y -qq --no-install-recommends docker.io >>"$STATE/apt.log" 2>&1 ||
			{ log "apt-get install docker.io failed (see $STATE/apt.log)"; return 1; }
		log "installed docker.io in $((SECONDS - t0))s"
	fi
	# The package's service may have been started by apt on a systemd machine.
	if answers; then
		log "engine answers after install"
		return 0
	fi
	command -v docker >/dev/null 2>&1 || { log "no docker client on PATH"; return 1; }
	log "starting dockerd --bridge=none --iptables=false --ip-masq=false (log $LOG)"
	local t0
	t0=$(date +%s%N)
	dockerd --bridge=none --iptables=false --ip-masq=false --host="unix://$SOCK" >"$LOG" 2>&1 &
	echo $! >"$PIDFILE"
	for _ in $(seq 1 300); do
		if answers; then
			log "dockerd (pid $(cat "$PIDFILE")) answers after $((($(date +%s%N) - t0) / 1000000))ms"
			return 0
		fi
		if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
			log "dockerd exited; last lines of $LOG:"
			tail -n 20 "$LOG" >&2 || true
			rm -f "$PIDFILE"
			return 1
		fi
		sleep 0.1
	done
	log "dockerd did not answer within 30s"
	stop
	return 1
}

stop() {
	if [[ -f $PIDFILE ]]; then
		local pid
		pid=$(cat "$PIDFILE")
		if kill -0 "$pid" 2>/dev/null; then
			log "stopping dockerd (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			for _ in $(seq 1 150); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			if kill -0 "$pid" 2>/dev/null; then
				log "dockerd (pid $pid) did not stop in 15s; killing it"
				kill -KILL "$pid" 2>/dev/null || true
			fi
		fi
		rm -f "$PIDFILE"
	fi
	if grep -qs ' /run/docker/netns/default ' /proc/mounts; then
		umount /run/docker/netns/default 2>/dev/null || umount -l /run/docker/netns/default 2>/dev/null || true
	fi
}

case ${1:-} in
ensure) shift; ensure "$@" ;;
stop) stop ;;
*) echo "usage: $0 ensure [--install] | stop" >&2; exit 2 ;;
esac
