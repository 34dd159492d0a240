#!/usr/bin/env bash
# Build a local PostgreSQL Docker image from this machine's own PostgreSQL
# install with `docker import`: no Dockerfile, no base image, no registry.
#
#   scripts/build-pg-image.sh [IMAGE]        (default effectonce/postgres:local)
#
# The image holds /usr/lib/postgresql/<v> (without the optional LLVM JIT),
# /usr/share/postgresql/<v>, the time zone data, the shared libraries ldd
# lists, /bin/sh, a postgres user and /entrypoint.sh. The entrypoint honours
# POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB (so the testcontainers
# postgres module's options work), runs initdb with trust authentication on
# first start, then `exec postgres -c listen_addresses=127.0.0.1 -p $PGPORT "$@"`
# (a leading "postgres" argument is dropped, as in the official image).
# POSTGRES_LISTEN_ADDRESSES changes the listen address. It is meant for the
# host network: pass PGPORT (or -p) to choose a free port.
#
# Needs a running Docker engine. If the PostgreSQL binaries are missing,
# postgresql-15 is installed with apt-get first.
set -euo pipefail

IMAGE=${1:-${PG_IMAGE:-effectonce/postgres:local}}

log() { printf 'build-pg-image: %s\n' "$*" >&2; }

pg_version() {
	local d
	d=$(ls -1 /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
	if [[ -n $d && -x /usr/lib/postgresql/$d/bin/postgres ]]; then
		echo "$d"
	fi
}

PGV=$(pg_version)
if [[ -z $PGV ]]; then
	log "no PostgreSQL binaries under /usr/lib/postgresql: installing postgresql-15"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq postgresql-15 >/dev/null
	PGV=$(pg_version)
	[[ -n $PGV ]] || { log "postgresql-15 installed but no binaries found"; exit 1; }
fi

command -v docker >/dev/null || { log "no docker client on PATH"; exit 1; }
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || { log "the Docker engine does not answer"; exit 1; }

start=$(date +%s.%N)
ROOTFS=$(mktemp -d /tmp/effectonce-pg-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

PGLIB=/usr/lib/postgresql/$PGV
PGSHARE=/usr/share/postgresql/$PGV
PG_UID=999
PG_GID=999

# Keep the host's merged-/usr layout (bin -> usr/bin, lib -> usr/lib, ...),
# so library paths ldd prints resolve the same way inside the image.
mkdir -p "$ROOTFS/usr/bin" "$ROOTFS/usr/lib" "$ROOTFS/usr/sbin"
for d in bin sbin lib lib32 lib64 libx32; do
	if [[ -L /$d ]]; then
		ln -s "$(readlink "/$d")" "$ROOTFS/$d"
		mkdir -p "$ROOTFS/$(readlink -f "/$d")"
	fi
done

# PostgreSQL itself, without the JIT provider (it pulls in LLVM).
mkdir -p "$ROOTFS$PGLIB" "$ROOTFS$PGSHARE"
tar -C "$PGLIB" --exclude='./lib/llvmjit*' --exclude='./lib/bitcode' -cf - . | tar -C "$ROOTFS$PGLIB" -xf -
tar -C "$PGSHARE" -cf - . | tar -C "$ROOTFS$PGSHARE" -xf -
# Built --with-system-tzdata: the server reads /usr/share/zoneinfo.
if [[ -d /usr/share/zoneinfo ]]; then
	mkdir -p "$ROOTFS/usr/share/zoneinfo"
	tar -C /usr/share/zoneinfo -cf - . | tar -C "$ROOTFS/usr/share/zoneinfo" -xf -
fi

# /bin/sh as a real file (initdb runs commands through popen; a dangling
# symlink makes it fail with "popen failure: Cannot allocate memory").
SH_REAL=$(readlink -f /bin/sh)
install -m 0755 "$SH_REAL" "$ROOTFS/usr/bin/sh"

# Every shared library the binaries and modules need, per ldd.
copy_lib() {
	local src=$1 dst
	dst="$ROOTFS$src"
	[[ -e $dst ]] && return 0
	mkdir -p "$(dirname "$dst")"
	cp -L "$src" "$dst"
}
mapfile -t elves < <(find "$ROOTFS$PGLIB" -type f \( -perm -u+x -o -name '*.so*' \) | sed "s|^$ROOTFS||")
elves+=("$SH_REAL")
declare -A seen=()
for f in "${elves[@]}"; do
	while read -r lib; do
		[[ -n $lib && -z ${seen[$lib]:-} ]] || continue
		seen[$lib]=1
		copy_lib "$lib"
	done < <(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
done

# Users, directories.
mkdir -p "$ROOTFS/etc" "$ROOTFS/var/lib/postgresql/data" "$ROOTFS/var/run/postgresql" "$ROOTFS/tmp" \
	"$ROOTFS/docker-entrypoint-initdb.d" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev"
cat >"$ROOTFS/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
postgres:x:$PG_UID:$PG_GID:PostgreSQL administrator:/var/lib/postgresql:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$ROOTFS/etc/group" <<EOF
root:x:0:
postgres:x:$PG_GID:
nogroup:x:65534:
EOF
chmod 1777 "$ROOTFS/tmp"
chown -R "$PG_UID:$PG_GID" "$ROOTFS/var/lib/postgresql" "$ROOTFS/var/run/postgresql"
chmod 0700 "$ROOTFS/var/lib/postgresql/data"
chmod 2775 "$ROOTFS/var/run/postgresql"

# The entrypoint uses shell built-ins and PostgreSQL's own binaries only.
cat >"$ROOTFS/entrypoint.sh" <<'EOF'
#!/bin/sh
# Entrypoint of the locally built effectonce PostgreSQL image.
set -eu
PGBIN=@PGLIB@/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
PGPORT=${PGPORT:-5432}
export PGDATA PGPORT
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
LISTEN=${POSTGRES_LISTEN_ADDRESSES:-127.0.0.1}

# Like the official image: "postgres ARGS" or "-flags" start the server,
# anything else is run as a command.
if [ "${1:-}" = postgres ]; then
	shift
elif [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
	exec "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	pwfile=
	if [ -n "${POSTGRES_PASSWORD:-}" ]; then
		pwfile=/tmp/.pwfile
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	fi
	"$PGBIN/initdb" --auth=trust --locale=C -E UTF8 --no-sync \
		-U "$POSTGRES_USER" -D "$PGDATA" ${pwfile:+"--pwfile=$pwfile"} >/dev/null
	[ -z "$pwfile" ] || : >"$pwfile"
	if [ "$POSTGRES_DB" != postgres ]; then
		printf 'CREATE DATABASE "%s";\n' "$POSTGRES_DB" |
			"$PGBIN/postgres" --single -j -D "$PGDATA" postgres >/dev/null
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
		*.sql) "$PGBIN/postgres" --single -j -D "$PGDATA" "$POSTGRES_DB" <"$f" >/dev/null ;;
		*.sh) . "$f" ;;
		*) if [ -e "$f" ]; then echo "entrypoint: ignoring $f" >&2; fi ;;
		esac
	done
	echo "entrypoint: initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)" >&2
fi

exec "$PGBIN/postgres" -c listen_addresses="$LISTEN" -c jit=off -p "$PGPORT" "$@"
EOF
sed -i "s|@PGLIB@|$PGLIB|" "$ROOTFS/entrypoint.sh"
chmod 0755 "$ROOTFS/entrypoint.sh"

size=$(du -sh "$ROOTFS" | cut -f1)
tar -C "$ROOTFS" -c . | docker import \
	-c 'USER postgres' \
	-c "ENV PATH=$PGLIB/bin:/usr/bin:/bin PGDATA=/var/lib/postgresql/data" \
	-c 'WORKDIR /var/lib/postgresql' \
	-c 'ENTRYPOINT ["/entrypoint.sh"]' \
	-c 'CMD ["postgres"]' \
	-m "effectonce: PostgreSQL $PGV from the host install" \
	- "$IMAGE" >/dev/null
end=$(date +%s.%N)
log "built $IMAGE (PostgreSQL $PGV, rootfs $size) in $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1fs", b-a}')"
