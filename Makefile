# The two commands in the README: `make run` and `make test`. Each does all of its own set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extras the tests need; `make run` installs the core only.
TEST_EXTRAS ?= dev

.PHONY: run test install-run install-test system-deps lint typecheck pytest bench-kiosk clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install-run: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e ".[$(TEST_EXTRAS)]"

## Install and start the server on its embedded defaults (http://127.0.0.1:8000).
run: install-run
	$(BIN)/sluiceway serve

## Install everything the tests need (pip packages, and Debian packages when missing), then
## lint, type-check and run the whole suite.
test: system-deps install-test lint typecheck pytest

system-deps:
	bash scripts/system-deps.sh

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

pytest:
	bash scripts/pytest.sh

## The kiosk benchmark: ceiling, naive and Sluiceway under the seed's Locust load.
bench-kiosk: install-test
	$(BIN)/python -m bench.kiosk.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
