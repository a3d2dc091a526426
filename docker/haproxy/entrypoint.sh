#!/bin/sh
# compose.yaml's `lb` starts here: refuse an API_REPLICAS the proxy cannot serve, then
# run HAProxy in the foreground (master-worker, as the official image's entrypoint does).
# Compose itself refuses a value that is not a whole number >= 0.
set -eu
config=${HAPROXY_CONFIG:-/usr/local/etc/haproxy/haproxy.cfg}
# The slots of backend api (the first server-template; api_panic has as many).
slots=$(sed -n 's/^ *server-template api \([0-9][0-9]*\) .*/\1/p' "$config" | head -n 1)
replicas=${API_REPLICAS:-}
case "$replicas" in
    '' | *[!0-9]*)
        echo "lb: API_REPLICAS='$replicas' is not a whole number (1 to $slots)" >&2
        exit 64 ;;
esac
if [ "$replicas" -lt 1 ] || [ "$replicas" -gt "$slots" ]; then
    echo "lb: API_REPLICAS=$replicas is out of range: 1 to $slots (the server slots in docker/haproxy/haproxy.cfg)" >&2
    exit 64
fi
exec haproxy -W -db -f "$config"
