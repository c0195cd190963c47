# Ferry: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck proto clean venv bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the project metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Start embedded Redis + control plane + data plane + two demo backends.
demo: $(STAMP)
	$(BIN)/ferry up --data-dir ./ferry-data

## Run the whole test suite (lint and type checks included).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy control_plane data_plane ferry
	$(BIN)/pytest -q

## Benchmarks: installs nginx, HAProxy and wrk (Debian packages) if missing, then runs
## every scenario; results in bench/results/. Pass options with BENCH_ARGS="--quick".
BENCH_ARGS ?=
bench: $(STAMP)
	bash bench/install.sh
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy control_plane data_plane ferry

## Regenerate the committed protobuf modules from proto/*.proto.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/cluster.proto

clean:
	rm -rf $(VENV) ferry-data .pytest_cache .mypy_cache .ruff_cache
