# Rampart — `make help` lists the targets.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.rampart-setup

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

setup: ## install everything (apt packages, .venv, builds); idempotent
	@bash scripts/setup.sh
	@touch $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/apt-packages.txt $(wildcard scripts/build.d/*.sh) \
          $(wildcard driver/bpf/*) $(wildcard driver/native/*)
	@bash scripts/setup.sh
	@touch $(STAMP)

run: $(STAMP) ## run the host agent in the foreground with the embedded defaults
	$(VENV)/bin/rasp-agent run $(ARGS)

test: $(STAMP) ## run the whole test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) ## quick loop: unit tests and the fast integration tests
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP) ## run the benchmarks and print their ratios
	$(PY) bench/agent_ingest.py
	$(PY) bench/python_overhead.py
	$(PY) bench/python_asgi_context.py
	$(PY) bench/jvm_overhead.py
	$(PY) bench/php_overhead.py
	$(PY) bench/php_hook_cost.py
	$(PY) bench/driver.py
	$(PY) bench/enforce.py
	$(PY) bench/node_overhead.py
	$(PY) bench/detection.py
	$(PY) bench/go_overhead.py
	$(PY) bench/go_detect.py

lint: $(STAMP) ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protocol-schema: $(STAMP) ## regenerate rasp/protocol/schema.json from the schema module
	$(PY) -m rasp.protocol.gen_schema

clean: ## remove build outputs (keeps .venv)
	rm -rf build .pytest_cache

.PHONY: help setup run test test-fast bench lint fmt protocol-schema clean
