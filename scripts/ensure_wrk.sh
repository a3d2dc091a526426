#!/usr/bin/env bash
# Install wrk (Debian's package), the HTTP load generator of the benchmarks
# (scripts/bench_*.py) and of their smoke tests. Idempotent; used by .ci/run. Root or
# sudo needed only when it has to install.
set -euo pipefail

log() { printf 'ensure_wrk: %s\n' "$*" >&2; }

if command -v wrk >/dev/null; then
  log "$(wrk --version 2>&1 | head -n 1)"
  exit 0
fi
command -v apt-get >/dev/null || { log "no apt-get: install wrk yourself"; exit 1; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}
log "installing wrk with apt"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
log "$(wrk --version 2>&1 | head -n 1)"
