#!/usr/bin/env bash
# A streaming read replica of the local PostgreSQL for `make test`, `.ci/run` and the replica
# tests (README, "Read replica"). Idempotent:
#
#   scripts/replica.sh [start|stop|status|rebuild]
#
# start   prepares the primary (127.0.0.1:5432) for replication when it is not yet: a
#         `host replication postgres 127.0.0.1/32 trust` line in its pg_hba.conf,
#         max_slot_wal_keep_size = 4GB (ALTER SYSTEM) and a reload (never a restart:
#         wal_level `replica` and max_wal_senders > 0 are PostgreSQL's defaults, checked here); creates a second cluster `replica` on 127.0.0.1:5433 with
#         Debian's pg_createcluster, fills it with `pg_basebackup -R` (a standby streaming from
#         the primary, through the physical slot signoff_replica), starts it and waits until it
#         streams. A replica that cannot catch up (stopped past the slot's 4 GB) is rebuilt.
# stop    stops the replica cluster (the primary is untouched).
# status  prints the replica's state and its replay lag; exits 1 unless it streams.
# rebuild drops the replica's data and takes a new base backup.
#
# Environment: REPLICA_PORT (5433), PRIMARY_PORT (5432), PG_VERSION (the installed one).
# `trust` for the local postgres user, as the primary on a CI machine has: never for a
# deployment (there: a replication user with a password or a certificate).
set -euo pipefail

action="${1:-start}"
port="${REPLICA_PORT:-5433}"
primary_port="${PRIMARY_PORT:-5432}"
version="${PG_VERSION:-$(ls /etc/postgresql | sort -n | tail -1)}"
cluster=replica
slot=signoff_replica
bindir="/usr/lib/postgresql/$version/bin"
datadir="/var/lib/postgresql/$version/$cluster"

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

psql_primary() {
  psql -X -h 127.0.0.1 -p "$primary_port" -U postgres -d postgres -Atq "$@"
}

psql_replica() {
  psql -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atq "$@"
}

cluster_exists() {
  [ -f "/etc/postgresql/$version/$cluster/postgresql.conf" ] && [ -f "$datadir/PG_VERSION" ]
}

answers() {
  pg_isready -h 127.0.0.1 -p "$port" -q 2>/dev/null
}

streaming() {
  [ "$(psql_replica -c "select status from pg_stat_wal_receiver" 2>/dev/null)" = streaming ]
}

prepare_primary() {
  local level senders hba
  level="$(psql_primary -c "show wal_level")"
  senders="$(psql_primary -c "show max_wal_senders")"
  if [ "$level" = minimal ] || [ "$senders" = 0 ]; then
    # Both need a restart of the primary, which this script never does on its own.
    echo "the primary has wal_level=$level, max_wal_senders=$senders: set wal_level=replica" \
      "and max_wal_senders>=2, then restart it once (README, \"Read replica\")" >&2
    exit 1
  fi
  hba="$(psql_primary -c "show hba_file")"
  if ! grep -Eq '^host[[:space:]]+replication[[:space:]]+(postgres|all)[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    # Before the first `host` line: pg_hba.conf is read top down, first match wins.
    printf '%s\n' "# Added by signoff scripts/replica.sh: the local streaming replica." \
      "host replication postgres 127.0.0.1/32 trust" >"$hba.signoff"
    cat "$hba" >>"$hba.signoff"
    cat "$hba.signoff" >"$hba"  # keep the file's owner and mode
    rm -f "$hba.signoff"
    psql_primary -c "select pg_reload_conf()" >/dev/null
    echo "replica: allowed replication from 127.0.0.1 in $hba (reloaded)"
  fi
  # A stopped replica's slot keeps WAL on the primary: bounded, so a forgotten replica never
  # fills the primary's disk (its slot is invalidated past this, and `start` rebuilds it).
  if [ "$(psql_primary -c "show max_slot_wal_keep_size")" = -1 ]; then
    psql_primary -c "alter system set max_slot_wal_keep_size = '4GB'" -c "select pg_reload_conf()" >/dev/null
  fi
}

create() {
  command -v pg_createcluster >/dev/null || {
    apt-get update -qq && apt-get install -y -qq postgresql-common >/dev/null
  }
  if [ ! -f "/etc/postgresql/$version/$cluster/postgresql.conf" ]; then
    pg_createcluster "$version" "$cluster" --port "$port" >/dev/null
  fi
  configure
  basebackup
}

configure() {
  local etc="/etc/postgresql/$version/$cluster"
  local conf="$etc/conf.d/90-signoff-replica.conf"
  # The local postgres user as on the primary of a CI machine (README, "Read replica").
  cat >"$etc/pg_hba.conf" <<HBA
# Written by signoff scripts/replica.sh; edits are overwritten.
local all all trust
host all all 127.0.0.1/32 trust
HBA
  cat >"$conf" <<CONF
# Written by signoff scripts/replica.sh; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $port
hot_standby = on
# Vacuum on the primary waits for the replica's queries instead of cancelling them.
hot_standby_feedback = on
max_standby_streaming_delay = 30s
wal_receiver_status_interval = 1s
CONF
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$conf" "$etc/pg_hba.conf"; fi
  if answers; then psql_replica -c "select pg_reload_conf()" >/dev/null 2>&1 || true; fi
}

basebackup() {
  pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" stop -m fast >/dev/null 2>&1 || true
  local try
  for try in 1 2 3; do
    as_postgres find "$datadir" -mindepth 1 -delete
    psql_primary -c "select pg_drop_replication_slot('$slot') from pg_replication_slots
      where slot_name = '$slot' and not active" >/dev/null
    # -R: standby.signal, primary_conninfo and primary_slot_name; -X stream: the WAL written
    # during the copy comes along; -C -S: a physical slot keeps the WAL from the copy's start
    # until the replica has it (on a busy primary it is recycled within seconds otherwise).
    if as_postgres "$bindir/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres \
      -D "$datadir" -R -X stream -C -S "$slot" --checkpoint=fast >/dev/null; then
      return 0
    fi
    echo "replica: base backup failed (try $try of 3)" >&2
    sleep 1
  done
  exit 1
}

start_cluster() {
  answers && return
  pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
  for _ in $(seq 1 100); do answers && return; sleep 0.2; done
  echo "the replica did not answer on 127.0.0.1:$port; see /var/log/postgresql/" >&2
  exit 1
}

wait_streaming() {
  for _ in $(seq 1 "${1:-50}"); do streaming && return 0; sleep 0.2; done
  return 1
}

start() {
  prepare_primary
  if cluster_exists; then configure; else create; fi
  start_cluster
  if ! wait_streaming 75; then
    echo "replica: not streaming (WAL it needs is gone from the primary?): rebuilding" >&2
    basebackup
    start_cluster
    wait_streaming 150 || { status; exit 1; }
  fi
  # A replay left paused (a test that died mid-way) would make the replica lag forever.
  psql_replica -c "select pg_wal_replay_resume()" >/dev/null 2>&1 || true
}

stop() {
  cluster_exists || return 0
  pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" stop -m fast >/dev/null 2>&1 || true
}

status() {
  if ! answers; then
    echo "replica: not running (127.0.0.1:$port)"
    return 1
  fi
  psql_replica -c "select 'replica: ' || coalesce((select status from pg_stat_wal_receiver), 'no receiver')
    || ', in recovery ' || pg_is_in_recovery()
    || ', replay paused ' || pg_is_wal_replay_paused()
    || ', replayed ' || pg_last_wal_replay_lsn()
    || ', last replay ' || coalesce(round(extract(epoch from now() - pg_last_xact_replay_timestamp())::numeric, 1)::text || ' s ago', 'never')"
  streaming
}

case "$action" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  rebuild) prepare_primary; cluster_exists || create; basebackup; start_cluster; wait_streaming 150 ;;
  *) echo "usage: $0 [start|stop|status|rebuild]" >&2; exit 2 ;;
esac
