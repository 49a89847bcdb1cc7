#!/usr/bin/env bash
# RabbitMQ for `make test`, `make chaos BROKER=amqp` and `.ci/run`. Idempotent: installs
# Debian's rabbitmq-server when missing, starts it (no systemd: `rabbitmq-server -detached`)
# unless it runs, waits for it, and gives the user guest (loopback only, RabbitMQ's default)
# a virtual host of its own.
#
#   scripts/rabbitmq.sh [start|restart|vhost] [VHOST]
#
# Default vhost: signoff_test. `restart` stops the whole server and starts it again (the
# fault the tests and the chaos run inject): quorum queues and their messages survive it.
set -euo pipefail

action="${1:-start}"
vhost="${2:-signoff_test}"

running() {
  rabbitmqctl -q status >/dev/null 2>&1
}

install() {
  command -v rabbitmq-server >/dev/null && return
  apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null
}

start() {
  install
  if ! running; then
    rabbitmq-server -detached
  fi
  # -detached returns before the node registers: wait for it to answer, then to boot.
  for _ in $(seq 1 120); do
    rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 && return
    sleep 0.5
  done
  echo "rabbitmq-server did not start; see /var/log/rabbitmq/" >&2
  exit 1
}

vhost() {
  rabbitmqctl -q list_vhosts | grep -qx "$vhost" || rabbitmqctl -q add_vhost "$vhost"
  rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null
}

case "$action" in
  start) start; vhost ;;
  restart)
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do running || break; sleep 0.2; done
    start
    ;;
  vhost) vhost ;;
  *) echo "usage: $0 [start|restart|vhost] [VHOST]" >&2; exit 2 ;;
esac
