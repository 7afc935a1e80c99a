# The two commands in the README: `make run` and `make test`. Each does all of its own set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extras the tests need; `make run` installs the core only. The captions extra pins
# torch==2.13.0, whose CPU build lies in /opt/wheels on these machines (any other torch, or the
# registry's build of this one, pulls gigabytes of CUDA packages).
TEST_EXTRAS ?= dev,captions,grpc
WHEELS ?= /opt/wheels
PIP_FIND := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS))

.PHONY: run test install-run install-test system-deps lint typecheck pytest clean \
	bench-kiosk bench-images bench-web bench-captions bench-scaleout bench-oip \
	bench-grpc

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install-run: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q $(PIP_FIND) -e ".[$(TEST_EXTRAS)]"

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

## Benchmarks: each runs Sluiceway beside its baselines in one go and rewrites bench/<name>/.
bench-kiosk: install-test
	$(BIN)/python -m bench.kiosk.run

bench-images: install-test
	$(BIN)/python -m bench.images.run

bench-web: install-test
	$(BIN)/python -m bench.web.run

bench-captions: install-test
	$(BIN)/python -m bench.captions.run

bench-scaleout: install-test system-deps
	$(BIN)/python -m bench.scaleout.run

bench-oip: install-test
	flock /tmp/sluiceway-bench.lock $(BIN)/python -m bench.oip.run

bench-grpc: install-test system-deps
	flock /tmp/sluiceway-bench.lock $(BIN)/python -m bench.grpc.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
