#!/usr/bin/env bash
# Install Prometheus and promtool (Debian's `prometheus` package) for the observability
# tests, without leaving the packaged service running: the tests start their own
# Prometheus on free ports, and compose publishes its own on 127.0.0.1:9090.
# Idempotent; used by .ci/run. Root or sudo needed only when it has to install.
set -euo pipefail

log() { printf 'ensure_prometheus: %s\n' "$*" >&2; }

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  log "$(promtool --version 2>&1 | head -n 1)"
  exit 0
fi
command -v apt-get >/dev/null || { log "no apt-get: install prometheus and promtool yourself"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

# Debian starts a package's service on install unless policy-rc.d forbids it.
guard=/usr/sbin/policy-rc.d
created_guard=0
if [ ! -e "$guard" ]; then
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $guard && chmod +x $guard"
  created_guard=1
fi
log "installing prometheus with apt (service not started)"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
[ "$created_guard" = 1 ] && as_root rm -f "$guard"
# Not at boot either (no-op where systemd is not running).
as_root systemctl disable prometheus >/dev/null 2>&1 || true
log "$(promtool --version 2>&1 | head -n 1)"
