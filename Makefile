# The entry point for people and CI. Needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= $(if $(wildcard config.toml),config.toml,config.example.toml)

.PHONY: run test lint format demo bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("watcher needs Python 3.11 or newer (found %s)" % sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed  ## start the service on the embedded SQLite store
	$(BIN)/watcher run -c $(CONFIG)

demo: $(VENV)/.installed  ## offline end-to-end demo on bundled sample feeds
	$(BIN)/watcher demo

lint: $(VENV)/.installed-dev  ## ruff + mypy strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint  ## lint, then the whole test suite
	$(BIN)/pytest

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed-dev
	@for b in bench/*.py; do echo "# $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
