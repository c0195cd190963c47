# Ferry: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck proto clean venv bench constraints

# Every install takes its versions from constraints.txt (all direct and transitive
# dependencies, pip and the build backend pinned), so a new wheel upstream cannot change
# what CI runs. `make constraints` refreshes it on purpose.
CONSTRAINTS := constraints.txt
export PIP_CONSTRAINT := $(abspath $(CONSTRAINTS))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project metadata or the pinned versions change.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Start embedded Redis + control plane + data plane + two demo backends.
demo: $(STAMP)
	$(BIN)/ferry up --data-dir ./ferry-data

## Run the whole test suite (lint and type checks included).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy control_plane data_plane ferry ferry_shared
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
	$(BIN)/mypy control_plane data_plane ferry ferry_shared

## Regenerate the committed protobuf modules from proto/*.proto.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/cluster.proto

## Re-resolve .[dev] from scratch (no constraints) and pin the result in constraints.txt.
constraints:
	rm -rf .venv-constraints
	PIP_CONSTRAINT= $(PYTHON) -m venv .venv-constraints
	PIP_CONSTRAINT= .venv-constraints/bin/pip install --quiet --upgrade pip 'setuptools>=68' wheel
	PIP_CONSTRAINT= .venv-constraints/bin/pip install --quiet -e '.[dev]'
	{ echo "# Pinned by 'make constraints' from pyproject.toml; refresh on purpose, review the diff."; \
	  PIP_CONSTRAINT= .venv-constraints/bin/pip freeze --all --exclude-editable | LC_ALL=C sort -f; } > $(CONSTRAINTS)
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) ferry-data .pytest_cache .mypy_cache .ruff_cache
