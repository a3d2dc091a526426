#!/bin/sh
# Entrypoint of parity-offline/redis:7-bookworm, the offline stand-in for the official
# redis image (docker/offline/README.md). Like it:
#   - arguments starting with `-` or ending in `.conf` are redis-server's;
#   - protected mode is off, so clients on the container's network can connect (the
#     official image patches the default in the source; here `--protected-mode no` is
#     put before the command's own options, which therefore still win, and left out
#     when a given config file sets protected-mode itself);
#   - redis-server runs as the redis user, exec'd: it is PID 1 and gets the signals.
set -eu

case "${1:-}" in
    -* | *.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ]; then
    shift
    case "${1:-}" in
        -v | --version | -h | --help | --test-memory | --check-system)
            # Only understood as redis-server's first argument.
            set -- redis-server "$@"
            ;;
        '' | -*)
            set -- redis-server --protected-mode no "$@"
            ;;
        *)
            config="$1"
            shift
            if grep -Eqs '^[[:space:]]*protected-mode[[:space:]]' "$config"; then
                set -- redis-server "$config" "$@"
            else
                set -- redis-server "$config" --protected-mode no "$@"
            fi
            ;;
    esac
    if [ "$(umask)" = 0022 ]; then
        umask 0077
    fi
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis '{}' +
        export HOME=/var/lib/redis
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi

exec "$@"
