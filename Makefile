# face-pipeline make targets. Every target installs what it needs first.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .venv-tools/bin/uv)
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install phase3-install test lint fmt

$(UV):
	python3 -m venv .venv-tools && .venv-tools/bin/pip install -q uv

.venv/.synced: pyproject.toml uv.lock $(wildcard services/*/pyproject.toml) operator/pyproject.toml | $(UV)
	$(UV) sync --frozen 2>/dev/null || $(UV) sync
	touch $@

install: .venv/.synced ## create .venv with every member and the dev tools

phase3-install: install ## the runbook's name for `make install`

test: install ## the whole suite against real servers
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	.venv/bin/ruff check .
