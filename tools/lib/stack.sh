# shellcheck shell=bash
# tools/lib/stack.sh: throwaway Postgres 15 + Redis for local runs and tests, plus the port and
# health helpers that tools/dev and tests/run-all.sh share. Source it from bash; it defines
# functions and a few variables and runs nothing.
#
# A stack lives in one folder DIR:
#   DIR/pg/data          PGDATA (owned by the postgres user when run as root, mode 0700)
#   DIR/pg/run           unix socket dir (HM_DATABASE_URL's host=); see hm_pg_sockdir
#   DIR/pg/postgres.log  server log
#   DIR/redis/           redis.pid, redis.log
# Every function is idempotent (start on a running stack and stop on a stopped one succeed) and
# leaves nothing running when it fails. Functions return non-zero and print to stderr on error.
#
# Modes: "dev" keeps Postgres' durability defaults; "test" turns off fsync, synchronous_commit and
# full_page_writes (initdb -N too): test clusters are thrown away after the run, and a crash can
# lose or corrupt their data, which no test may rely on.
#
# Only 127.0.0.1 is ever listened on or probed.

HM_PG_BIN=${HM_PG_BIN:-/usr/lib/postgresql/15/bin}
# One database per daemon.
HM_DATABASES=(guestd bookingd recommenderd gamificationd privacyd partnersim)
HM_STACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

hm_err() { printf '%s: %s\n' "${HM_PROG:-stack}" "$*" >&2; }
hm_info() { printf '%s: %s\n' "${HM_PROG:-stack}" "$*" >&2; }
hm_die() {
	hm_err "$*"
	exit 1
}

# Runs a command as the postgres user when we are root (initdb and pg_ctl refuse root), else as
# ourselves. cd / first so the postgres user is not left in a folder it cannot read.
hm__as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# Succeeds when process PID exists and is not a zombie (a daemonized server's parent may be slow
# to reap it).
hm_alive() {
	local st
	kill -0 "$1" 2>/dev/null || return 1
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
	[ "${st%% *}" != Z ]
}

# Gives a folder to the postgres user (no-op unless root).
hm__pg_own() {
	if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$@"; fi
}

# ---------------------------------------------------------------------------------------------
# Ports

# Succeeds when something listens on 127.0.0.1:PORT (or on any address that covers it).
hm_port_busy() {
	local port=$1
	if command -v ss >/dev/null 2>&1; then
		ss -Hltn "sport = :$port" 2>/dev/null | grep -q .
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
	fi
}

# Succeeds when no port in [BASE, BASE+COUNT) is listened on.
hm_ports_free() {
	local base=$1 count=$2 p
	if command -v ss >/dev/null 2>&1; then
		! ss -Hltn 2>/dev/null | awk -v lo="$base" -v hi=$((base + count)) \
			'{ n = split($4, a, ":"); p = a[n] + 0; if (p >= lo && p < hi) found = 1 } END { exit !found }'
	else
		for ((p = base; p < base + count; p++)); do
			hm_port_busy "$p" && return 1
		done
		return 0
	fi
}

# ---------------------------------------------------------------------------------------------
# Postgres

# Prints the unix socket dir of the stack in DIR. A socket path is limited to 107 bytes, so a
# deep DIR gets its sockets in a short /tmp folder named after DIR (same name every time).
hm_pg_sockdir() {
	local dir=$1 s="$1/pg/run"
	if [ $((${#s} + 20)) -gt 100 ]; then
		s="/tmp/hm-pgsock-$(printf '%s' "$dir" | cksum | cut -d' ' -f1)"
	fi
	printf '%s\n' "$s"
}

# Prints the postmaster's pid when the cluster in DIR runs, else fails.
hm_pg_pid() {
	local pidfile="$1/pg/data/postmaster.pid" pid
	[ -f "$pidfile" ] || return 1
	read -r pid <"$pidfile" || return 1
	[ -n "$pid" ] && hm_alive "$pid" || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
	printf '%s\n' "$pid"
}

hm_pg_running() { hm_pg_pid "$1" >/dev/null; }

# Prints the libpq conninfo for database DB of the stack in DIR listening on PORT.
hm_pg_conninfo() {
	printf 'host=%s port=%s dbname=%s user=postgres\n' "$(hm_pg_sockdir "$1")" "$2" "${3:-postgres}"
}

# Runs psql on the stack: hm_pg_psql DIR PORT [psql args...] (database postgres unless -d).
hm_pg_psql() {
	local dir=$1 port=$2
	shift 2
	"$HM_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$(hm_pg_sockdir "$dir")" -p "$port" -U postgres \
		-d postgres "$@"
}

# Creates the databases that do not exist yet: hm_pg_createdbs DIR PORT [db...]
# (default: one per daemon, HM_DATABASES).
hm_pg_createdbs() {
	local dir=$1 port=$2 existing db
	shift 2
	[ $# -gt 0 ] || set -- "${HM_DATABASES[@]}"
	existing=$(hm_pg_psql "$dir" "$port" -tA -c 'SELECT datname FROM pg_database') || return 1
	for db in "$@"; do
		grep -qxF "$db" <<<"$existing" && continue
		hm_pg_psql "$dir" "$port" -c "CREATE DATABASE \"$db\"" || return 1
	done
}

# Starts (initialising if needed) the cluster of DIR on 127.0.0.1:PORT and creates the daemons'
# databases: hm_pg_start DIR PORT [dev|test]. DIR must exist and be traversable by the postgres
# user; DIR/pg is created for it.
hm_pg_start() {
	local dir=$1 port=$2 mode=${3:-dev}
	local pgdir="$dir/pg" data="$dir/pg/data" log="$dir/pg/postgres.log" sock cur fresh=0
	sock=$(hm_pg_sockdir "$dir")
	[ -x "$HM_PG_BIN/initdb" ] || {
		hm_err "no $HM_PG_BIN/initdb: install postgresql-15 (tools/dev setup)"
		return 1
	}
	if hm_pg_running "$dir"; then
		cur=$(sed -n 4p "$data/postmaster.pid")
		if [ "$cur" != "$port" ]; then
			hm_err "postgres in $data already runs on port $cur, not $port: stop it first"
			return 1
		fi
		hm_pg_createdbs "$dir" "$port"
		return
	fi
	if hm_port_busy "$port"; then
		hm_err "port $port (postgres) is already in use"
		return 1
	fi
	mkdir -p "$pgdir" "$sock" || return 1
	hm__pg_own "$pgdir" "$sock"
	chmod 0755 "$pgdir" "$sock"
	if ! hm__as_pg test -w "$pgdir"; then
		hm_err "the postgres user cannot write $pgdir: every folder above it must be traversable (chmod o+x)"
		return 1
	fi
	if [ ! -s "$data/PG_VERSION" ]; then
		rm -rf "$data"
		local nosync=()
		[ "$mode" = test ] && nosync=(-N)
		if ! hm__as_pg "$HM_PG_BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C \
			"${nosync[@]}" >"$pgdir/initdb.log" 2>&1; then
			hm_err "initdb failed:"
			tail -n 20 "$pgdir/initdb.log" >&2
			rm -rf "$data"
			return 1
		fi
		fresh=1
		{
			echo
			echo "# hospitality-mesh ($mode cluster, written by tools/lib/stack.sh)"
			echo "listen_addresses = '127.0.0.1'"
			echo "max_connections = 200"
			echo "log_line_prefix = '%m [%p] %q%u@%d '"
			if [ "$mode" = test ]; then
				echo "fsync = off"
				echo "synchronous_commit = off"
				echo "full_page_writes = off"
			fi
			echo "include_if_exists = 'hm-runtime.conf'"
		} >>"$data/postgresql.conf"
	fi
	# Port and socket dir may change between starts; they live in their own file.
	printf "port = %s\nunix_socket_directories = '%s'\n" "$port" "${sock//\'/\'\'}" >"$data/hm-runtime.conf"
	hm__pg_own "$data/hm-runtime.conf"
	if ! hm__as_pg "$HM_PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 -s start >/dev/null; then
		hm_err "postgres did not start on port $port; last lines of $log:"
		tail -n 20 "$log" >&2
		hm_pg_stop "$dir"
		[ "$fresh" = 1 ] && rm -rf "$data"
		return 1
	fi
	if ! hm_pg_createdbs "$dir" "$port"; then
		hm_err "could not create the databases"
		hm_pg_stop "$dir"
		return 1
	fi
}

# Stops the cluster of DIR (fast shutdown, then immediate, then SIGKILL). Keeps its data.
hm_pg_stop() {
	local dir=$1 data="$1/pg/data" pid i sock
	if pid=$(hm_pg_pid "$dir"); then
		if ! hm__as_pg "$HM_PG_BIN/pg_ctl" -D "$data" -m fast -w -t 30 -s stop >/dev/null 2>&1 &&
			! hm__as_pg "$HM_PG_BIN/pg_ctl" -D "$data" -m immediate -w -t 10 -s stop >/dev/null 2>&1; then
			kill -KILL "$pid" 2>/dev/null
			for ((i = 0; i < 50; i++)); do
				hm_alive "$pid" || break
				sleep 0.1
			done
		fi
		if hm_pg_running "$dir"; then
			hm_err "postgres (pid $pid) did not stop"
			return 1
		fi
	fi
	sock=$(hm_pg_sockdir "$dir")
	case $sock in /tmp/hm-pgsock-*) rm -rf "$sock" ;; esac
	return 0
}

# ---------------------------------------------------------------------------------------------
# Redis

# Prints redis-server's pid when the Redis of DIR runs, else fails.
hm_redis_pid() {
	local pidfile="$1/redis/redis.pid" pid
	[ -f "$pidfile" ] || return 1
	read -r pid <"$pidfile" || return 1
	[ -n "$pid" ] && hm_alive "$pid" || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] || return 1
	printf '%s\n' "$pid"
}

hm_redis_running() { hm_redis_pid "$1" >/dev/null; }

# Starts Redis of DIR on 127.0.0.1:PORT, no persistence: hm_redis_start DIR PORT.
hm_redis_start() {
	local dir=$1 port=$2 rdir="$1/redis" i
	if hm_redis_running "$dir"; then
		if [ "$(cat "$rdir/port" 2>/dev/null)" != "$port" ]; then
			hm_err "redis in $rdir already runs on port $(cat "$rdir/port" 2>/dev/null), not $port: stop it first"
			return 1
		fi
		return 0
	fi
	if hm_port_busy "$port"; then
		hm_err "port $port (redis) is already in use"
		return 1
	fi
	mkdir -p "$rdir" || return 1
	rm -f "$rdir/redis.pid"
	echo "$port" >"$rdir/port"
	if ! redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
		--daemonize yes --pidfile "$rdir/redis.pid" --logfile "$rdir/redis.log" --dir "$rdir" \
		>/dev/null; then
		hm_err "redis-server failed to start on port $port"
		tail -n 20 "$rdir/redis.log" >&2 2>/dev/null
		return 1
	fi
	for ((i = 0; i < 100; i++)); do
		if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && hm_redis_running "$dir"; then
			return 0
		fi
		sleep 0.1
	done
	hm_err "redis did not answer PING on port $port; last lines of $rdir/redis.log:"
	tail -n 20 "$rdir/redis.log" >&2 2>/dev/null
	hm_redis_stop "$dir"
	return 1
}

# Stops Redis of DIR (SIGTERM, then SIGKILL after 10 s).
hm_redis_stop() {
	local dir=$1 pid i
	pid=$(hm_redis_pid "$dir") || {
		rm -f "$dir/redis/redis.pid"
		return 0
	}
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		hm_alive "$pid" || break
		sleep 0.1
	done
	if hm_alive "$pid"; then
		kill -KILL "$pid" 2>/dev/null
		sleep 0.2
	fi
	rm -f "$dir/redis/redis.pid"
	! hm_alive "$pid"
}

# ---------------------------------------------------------------------------------------------
# Both

# hm_stack_start DIR PG_PORT REDIS_PORT [dev|test]: Postgres with one database per daemon, and
# Redis. On failure nothing is left running.
hm_stack_start() {
	local dir=$1 pg_port=$2 redis_port=$3 mode=${4:-dev}
	hm_pg_start "$dir" "$pg_port" "$mode" || return 1
	if ! hm_redis_start "$dir" "$redis_port"; then
		hm_pg_stop "$dir"
		return 1
	fi
}

# hm_stack_stop DIR: stops Redis and Postgres of DIR (data stays; remove DIR to forget it).
hm_stack_stop() {
	local rc=0
	hm_redis_stop "$1" || rc=1
	hm_pg_stop "$1" || rc=1
	return $rc
}

# ---------------------------------------------------------------------------------------------
# Health

# Prints the path of hmctl: HM_HMCTL, else BUILD/tools/hmctl/hmctl with BUILD = HM_BUILD_DIR
# (absolute, or relative to the repo root; default build).
hm_hmctl_path() {
	local b=${HM_BUILD_DIR:-build}
	case $b in /*) ;; *) b="$HM_STACK_ROOT/$b" ;; esac
	printf '%s\n' "${HM_HMCTL:-$b/tools/hmctl/hmctl}"
}

# hm_health GRPC_ADDR ADMIN_ADDR: succeeds when the daemon answers SERVING. Uses the project's
# hmctl when it is built (hm_hmctl_path), else the admin port's /readyz.
hm_health() {
	local grpc=$1 admin=$2 hmctl
	hmctl=$(hm_hmctl_path)
	if [ -x "$hmctl" ]; then
		timeout 5 "$hmctl" health "$grpc" --timeout 2000 >/dev/null 2>&1
	else
		curl -sf --max-time 2 -o /dev/null "http://$admin/readyz"
	fi
}

# Prints which probe hm_health uses.
hm_health_probe_name() {
	if [ -x "$(hm_hmctl_path)" ]; then echo "hmctl health"; else echo "GET /readyz"; fi
}
