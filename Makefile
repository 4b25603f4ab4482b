# `make dev` serves the relay on the emulators; `make test` runs every check CI runs.
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := functions/requirements.txt
# The lock without its hashes: pip takes hashes in requirements, never in constraints.
CONSTRAINTS := $(VENV)/constraints.txt
UV_VERSION := 0.13.8

.PHONY: dev test lint bench lock

# Tests run on what deploys: the lock first, hash-checked, then the development tools, which
# may add packages but never move one the lock pins.
$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --require-hashes -r $(LOCK)
	sed -e '/^ *--hash=/d' -e 's/ *\\$$//' $(LOCK) > $(CONSTRAINTS)
	$(VENV)/bin/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]' uv==$(UV_VERSION)
	touch $@

dev: $(STAMP)
	$(VENV)/bin/webhook-relay dev

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PYTHON) -m bench

# Recompiles $(LOCK) from functions/requirements.in; `make lock UPGRADE=--upgrade` moves pins.
lock: $(STAMP)
	.ci/lock $(UPGRADE)
