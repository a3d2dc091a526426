#!/usr/bin/env bash
# Make sure the local Postgres and Redis that the native stack and the tests use are
# running: start them if installed but stopped; install them with apt if absent (root
# only, otherwise print the command). Used by `make run`, `make test` and `.ci/run`.
# Skipped when DATABASE_URL / REDIS_URL point at another host, or SKIP_SERVICES=1.
set -euo pipefail

log() { printf 'ensure_services: %s\n' "$*" >&2; }

[ "${SKIP_SERVICES:-0}" = 1 ] && { log "SKIP_SERVICES=1: not touching services"; exit 0; }

is_local() { case "$1" in *@127.0.0.1*|*@localhost*|*//127.0.0.1*|*//localhost*|"") return 0;; *) return 1;; esac; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "cannot install $* here (no apt-get): install them yourself, or use 'docker compose up'"
    return 1
  fi
  log "installing $* with apt"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
# The default DATABASE_URL has no password: can the `postgres` role log in over TCP?
postgres_trusts_loopback() {
  PGPASSWORD= PGCONNECT_TIMEOUT=3 psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres \
    -tAc 'select 1' >/dev/null 2>&1
}
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

# A Debian cluster asks for passwords on 127.0.0.1 (scram-sha-256); the development
# cluster this script manages trusts loopback, so that the default DATABASE_URL (user
# postgres, no password) works. Done whenever that login fails, not only after a fresh
# install: the package may be preinstalled (a machine image) with its stock pg_hba.conf.
trust_loopback() {
  local version=$1 hba="/etc/postgresql/$1/main/pg_hba.conf"
  [ -f "$hba" ] || { log "no $hba: cannot make loopback trusted"; return 1; }
  log "trusting loopback connections in $hba (development cluster)"
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
}

ensure_postgres() {
  is_local "${DATABASE_URL:-}" || { log "DATABASE_URL is not local: skipping Postgres"; return 0; }
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  if ! postgres_up; then
    log "starting Postgres $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main restart
    local _
    for _ in $(seq 50); do postgres_up && break; sleep 0.2; done
    postgres_up || { log "Postgres did not come up"; return 1; }
  fi
  # A DATABASE_URL with a password (your own local role) needs no trust.
  case "${DATABASE_URL:-}" in *://*:*@*) return 0;; esac
  postgres_trusts_loopback && return 0
  trust_loopback "$version"
  for _ in $(seq 25); do postgres_trusts_loopback && return 0; sleep 0.2; done
  log "user postgres still cannot log in on 127.0.0.1 without a password"; return 1
}

ensure_redis() {
  is_local "${REDIS_URL:-}" || { log "REDIS_URL is not local: skipping Redis"; return 0; }
  command -v redis-cli >/dev/null || apt_install redis-server
  redis_up && return 0
  log "starting Redis"
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis_up && return 0; sleep 0.2; done
  log "Redis did not come up"; return 1
}

command -v pg_isready >/dev/null || apt_install postgresql-client
ensure_postgres
ensure_redis
log "Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) are up"
