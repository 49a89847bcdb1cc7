#!/usr/bin/env bash
# PgBouncer in transaction pooling mode in front of the local PostgreSQL, for `make test`,
# `.ci/run` and the tests that restart their own instance. Idempotent: installs Debian's
# pgbouncer when missing, writes <dir>/pgbouncer.ini and starts it unless one already answers
# on the port.
#
#   scripts/pgbouncer.sh [start|stop|restart|ini] [PORT] [DIR]
#
# Defaults: port 6432, dir var/pgbouncer (of this checkout). Every database name is passed on
# to 127.0.0.1:5432 (a wildcard entry); clients authenticate as any user listed in the
# userlist with `trust`, as the local PostgreSQL on this machine does: for tests, never for
# a deployment (see README, "PgBouncer and RabbitMQ").
set -euo pipefail
cd "$(dirname "$0")/.."

action="${1:-start}"
port="${2:-${PGBOUNCER_PORT:-6432}}"
dir="${3:-var/pgbouncer}"
pg_host="${PGBOUNCER_SERVER_HOST:-127.0.0.1}"
pg_port="${PGBOUNCER_SERVER_PORT:-5432}"
pool_size="${PGBOUNCER_POOL_SIZE:-20}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
ini="$dir/pgbouncer.ini"
pidfile="$dir/pgbouncer.pid"
# pgbouncer refuses to run as root: it drops to the postgres user (-u), which must write here.
run_as="${PGBOUNCER_USER:-postgres}"

answers() {
  pg_isready -h 127.0.0.1 -p "$port" -q 2>/dev/null
}

write_ini() {
  cat >"$dir/userlist.txt" <<USERS
"postgres" ""
USERS
  cat >"$ini" <<INI
; Written by scripts/pgbouncer.sh; edits are overwritten.
[databases]
* = host=$pg_host port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = $pool_size
max_client_conn = 500
; Server connections idle this long are closed (test databases are dropped after a run).
server_idle_timeout = 20
; psycopg and Django send nothing else that PgBouncer would refuse.
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $pidfile
INI
  if [ "$(id -u)" = 0 ]; then chown -R "$run_as" "$dir"; fi
}

install() {
  command -v pgbouncer >/dev/null && return
  [ -x /usr/sbin/pgbouncer ] && return
  apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null
}

start() {
  if answers; then return; fi
  install
  write_ini
  local bin; bin="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
  if [ "$(id -u)" = 0 ]; then "$bin" -d -u "$run_as" "$ini"; else "$bin" -d "$ini"; fi
  for _ in $(seq 1 50); do answers && return; sleep 0.1; done
  echo "pgbouncer did not answer on 127.0.0.1:$port; see $dir/pgbouncer.log" >&2
  exit 1
}

stop() {
  # SIGTERM: immediate shutdown (open transactions are cut, as in a crash of the pooler).
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid="$(cat "$pidfile")"
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  ini) write_ini; echo "$ini" ;;
  *) echo "usage: $0 [start|stop|restart|ini] [PORT] [DIR]" >&2; exit 2 ;;
esac
