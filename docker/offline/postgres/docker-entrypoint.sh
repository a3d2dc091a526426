#!/usr/bin/env bash
# Entrypoint of parity-offline/postgres:15-bookworm, the offline stand-in for the official
# postgres image (docker/offline/README.md), with the same contract for what we use:
#
#   POSTGRES_PASSWORD          the superuser's password; required unless
#                              POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER              the superuser (default postgres)
#   POSTGRES_DB                a database created for it (default: POSTGRES_USER)
#   POSTGRES_HOST_AUTH_METHOD  for TCP connections from anywhere (default scram-sha-256)
#   POSTGRES_INITDB_ARGS       more initdb arguments
#   PGDATA                     default /var/lib/postgresql/15/docker
#
# First start with an empty PGDATA: initdb (trust on the Unix socket and loopback, like
# the official image, then `host all all all <method>`), then
# /docker-entrypoint-initdb.d/*.sh, *.sql and *.sql.gz against a temporary server that
# listens on the Unix socket only. Then postgres is exec'd as the postgres user: it is
# PID 1 and receives `docker stop`'s SIGINT itself.
set -Eeuo pipefail
shopt -s nullglob

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%F %T UTC')" "$*"; }

wants_help() {
    local arg
    for arg; do
        case "$arg" in
            -'?' | --help | --describe-config | -V | --version) return 0 ;;
        esac
    done
    return 1
}

if [ "$#" -eq 0 ] || [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ] || wants_help "$@"; then
    exec "$@"
fi

export PGDATA="${PGDATA:-/var/lib/postgresql/15/docker}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ "$(id -u)" = 0 ]; then
    # As root: make PGDATA and the socket directory the postgres user's, then run this
    # script again as that user (setpriv execs: no process is left in between).
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    mkdir -p /var/run/postgresql
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    export HOME=/var/lib/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

initialize() {
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        cat >&2 <<'MESSAGE'
error: the database is uninitialized and POSTGRES_PASSWORD is not set.
       Set POSTGRES_PASSWORD to the superuser's password (-e POSTGRES_PASSWORD=...),
       or POSTGRES_HOST_AUTH_METHOD=trust to let every client in without a password
       (only ever for a throwaway container). Refusing to start.
MESSAGE
        exit 1
    fi

    log "initializing a database cluster in $PGDATA for superuser $POSTGRES_USER"
    local -a extra=()
    read -r -a extra <<<"${POSTGRES_INITDB_ARGS:-}"
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        # The password never appears on a command line (the descriptor lives as long as
        # this one command).
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
            "${extra[@]}"
    else
        initdb --username="$POSTGRES_USER" "${extra[@]}"
    fi
    printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" \
        >>"$PGDATA/pg_hba.conf"

    # A temporary server on the Unix socket only: nothing outside sees it until the
    # initialization is complete (compose's health check connects over TCP).
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start
    export PGPASSWORD="${POSTGRES_PASSWORD:-}"
    local -a psql=(psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --no-password --no-psqlrc)
    local exists
    exists="$("${psql[@]}" --dbname=postgres --set=db="$POSTGRES_DB" --tuples-only \
        --no-align <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
    if [ -z "$exists" ]; then
        log "creating database $POSTGRES_DB"
        "${psql[@]}" --dbname=postgres --set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi

    local file
    for file in /docker-entrypoint-initdb.d/*; do
        case "$file" in
            *.sh)
                if [ -x "$file" ]; then
                    log "running $file"
                    "$file"
                else
                    log "sourcing $file"
                    # shellcheck disable=SC1090
                    . "$file"
                fi
                ;;
            *.sql)
                log "running $file"
                "${psql[@]}" --dbname="$POSTGRES_DB" --file="$file"
                ;;
            *.sql.gz)
                log "running $file"
                gzip -dc "$file" | "${psql[@]}" --dbname="$POSTGRES_DB"
                ;;
            *) log "ignoring $file" ;;
        esac
    done

    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
    unset PGPASSWORD
    log "initialization complete; starting the server"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initialize
else
    log "PGDATA $PGDATA holds a database: no initialization"
fi

exec "$@"
