# The two commands: `make run` (dev server on http://127.0.0.1:8000) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/imsvc serve --dev

lint: install
	$(BIN)/ruff check imsvc tests migrations
	$(BIN)/ruff format --check imsvc tests migrations
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# Every scenario against `imsvc serve` on the local PostgreSQL (BENCH_DATABASE_URL); rewrites the README's table.
bench: install
	$(BIN)/python -m tests.bench --write-readme

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
