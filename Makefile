# The verbs people type. Each target is one line that calls a script or a tool.
# `make run` and `make test` do all set-up themselves on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: help venv services run test lint format lock clean dashboards verify-dashboards

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) scripts/bootstrap_venv.py $(VENV) && touch $@

venv: $(STAMP) ## create .venv with the pinned requirements

services: ## start (or install) the local Postgres and Redis
	scripts/ensure_services.sh

run: venv services ## migrate, seed and serve natively with Gunicorn on :8000
	$(BIN)/python scripts/stack.py up

test: venv services ## run the test suite against the real Postgres, Redis and Gunicorn
	$(BIN)/pytest

lint: venv ## ruff (lint + format check) and mypy --strict on app/
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

format: venv ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

lock: venv ## re-pin requirements*.txt from requirements*.in
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.txt requirements.in && $(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev.txt requirements-dev.in

dashboards: venv ## regenerate observability/grafana/dashboards/*.json from scripts/dashboards/
	$(BIN)/python scripts/grafana_dashboards.py

verify-dashboards: venv services ## every dashboard/rule expression has data (native Gunicorn + Prometheus)
	$(BIN)/python scripts/verify_dashboards.py --native

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
