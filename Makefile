# The verbs people type. Each target is one line: `parity COMMAND` (scripts/parity/),
# except the set-up that runs before the venv and its `parity` exist (venv, services,
# tools, clean).
# `make run` and `make test` do all set-up themselves on a fresh machine.

PYTHON ?= python3
# Any Compose v2 CLI: `docker compose` (the plugin), or `make COMPOSE=docker-compose up`.
COMPOSE ?= docker compose
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: help venv services run dev test lint audit format lock lock-check clean dashboards verify-dashboards tools images-offline e2e up up-offline down logs verify-shutdown rollout

.PHONY: loadtest tune demo

# make loadtest: the API to load (start it with `make run`), the scenario (mixed, browse,
# buy, burst), the load shape (constant, step, spike) and anything else for Locust.
HOST ?= http://127.0.0.1:8000
SCENARIO ?= mixed
SHAPE ?= constant
LOCUST_ARGS ?=
# Where the verbs write their reports and plots.
RESULTS ?= results
# make verify-shutdown: extra options for both runs (e.g. --clients 100).
VERIFY_SHUTDOWN_ARGS ?=
LOADTEST_DIR ?= $(RESULTS)/loadtest-$(shell date +%Y%m%d-%H%M%S)

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{n[NR] = $$1; d[NR] = $$2; if (length($$1) > w) w = length($$1)} END {for (i = 1; i <= NR; i++) printf ("  make %-" w "s  %s\n"), n[i], d[i]}'

$(STAMP): requirements.txt requirements-dev.txt
	PYTHONPATH=scripts $(PYTHON) -m parity.bootstrap $(VENV) && touch $@

venv: $(STAMP) ## create .venv with the pinned requirements

services: ## start (or install) the local Postgres and Redis
	scripts/ensure_services.sh

run: venv services ## migrate, seed and serve natively with Gunicorn on :8000
	$(BIN)/parity stack up

dev: venv services ## like make run, but one process that reloads when app/ changes
	$(BIN)/parity stack dev

test: venv services ## run the test suite against the real Postgres, Redis and Gunicorn
	$(BIN)/parity test

verify-shutdown: venv services ## SIGTERM and SIGHUP under load: prove no request is lost
	$(BIN)/parity verify shutdown --native --signal TERM --plot $(RESULTS)/shutdown-TERM.png $(VERIFY_SHUTDOWN_ARGS) && $(BIN)/parity verify shutdown --native --signal HUP --plot $(RESULTS)/shutdown-HUP.png $(VERIFY_SHUTDOWN_ARGS)

lint: venv ## ruff (lint + format check) and mypy --strict on app/ and scripts/parity/
	$(BIN)/parity lint

audit: venv ## pip-audit the pinned requirements (says so when it could not check)
	$(BIN)/parity audit

format: venv ## apply ruff's fixes and formatting
	$(BIN)/parity lint --fix

lock: venv ## re-export requirements*.txt (pinned, with hashes) from pyproject.toml with uv
	$(BIN)/parity lock

lock-check: venv ## fail when requirements*.txt are not what pyproject.toml exports (CI runs it)
	$(BIN)/parity lock --check

dashboards: venv ## regenerate observability/grafana/dashboards/*.json from scripts/parity/dashboards/
	$(BIN)/parity dashboards

verify-dashboards: venv services ## every dashboard/rule expression has data (native Gunicorn + Prometheus)
	$(BIN)/parity verify dashboards --native

tools: ## install the deploy tools: Compose CLI as the docker plugin, debootstrap, checkov (its own venv)
	PYTHON=$(PYTHON) scripts/install_deploy_tools.sh

images-offline: venv tools ## build the local stand-in images compose.offline.yaml runs (no registry)
	$(BIN)/parity images

e2e: venv tools ## the compose stack end to end on the real engine (offline images); CI runs it
	$(BIN)/parity e2e

up: venv ## docker compose: build, start the whole stack, wait until every service is healthy
	COMPOSE='$(COMPOSE)' $(BIN)/parity compose up

up-offline: venv tools ## docker compose without a registry (builds the stand-in images first): load balancer, API replicas, Postgres, Redis, Prometheus
	COMPOSE='$(COMPOSE)' $(BIN)/parity compose up --offline

down: venv ## docker compose: stop and remove the stack (data volumes are kept)
	COMPOSE='$(COMPOSE)' $(BIN)/parity compose down

logs: venv ## docker compose: follow the logs of every service
	COMPOSE='$(COMPOSE)' $(BIN)/parity compose logs

rollout: venv ## docker compose: replace every api replica one at a time under load; errors, p99, plot in results/rollout/ (ROLLOUT_ARGS=)
	$(BIN)/parity rollout $(ROLLOUT_ARGS)

loadtest: venv ## headless Locust against HOST (SCENARIO=, SHAPE=, LOCUST_ARGS=); CSV + HTML in results/
	$(BIN)/parity loadtest --out $(LOADTEST_DIR) --host $(HOST) --scenario $(SCENARIO) --shape $(SHAPE) $(LOCUST_ARGS)

tune: venv services ## measure the best Gunicorn worker count (parity tune --native; TUNE_ARGS=)
	$(BIN)/parity tune --native $(TUNE_ARGS)

demo: venv services ## 10 min of steady mixed load + the URLs of dashboards, metrics, a slow trace (DEMO_ARGS=--duration 120 --compose|--url URL)
	$(BIN)/parity demo $(DEMO_ARGS)

clean: ## remove the venv and caches
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
