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

# The compiled hot path (mypyc; data_plane/hot_path.py lists its modules). A C
# compiler is needed (gcc or clang, with the Python headers).
BUILT := $(VENV)/.built-hot-path
HOT_SOURCES := $(shell $(PYTHON) -c "import runpy; print(' '.join(m.replace('.', '/') + '.py' for m in runpy.run_path('data_plane/hot_path.py')['HOT_MODULES']))")

# Reinstall when the project metadata or the pinned versions change. mypy (mypyc) is
# installed first so the build uses the pinned compiler (--no-build-isolation).
$(STAMP): pyproject.toml setup.py $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet mypy
	$(BIN)/pip install --quiet --no-build-isolation -e '.[dev]'
	touch $(STAMP) $(BUILT)

# Recompile when a compiled module changes: a stale build never runs (the data plane
# would fall back to the source, and say so), but tests must exercise the new code.
$(BUILT): $(STAMP) data_plane/hot_path.py $(HOT_SOURCES)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(BUILT)

venv: $(BUILT)

## Start embedded Redis + control plane + data plane + two demo backends.
demo: $(BUILT)
	$(BIN)/ferry up --data-dir ./ferry-data

## Run the whole test suite (lint and type checks included).
## The suite runs on the compiled hot path, then its proxy, balancer and router tests
## again on the pure-Python one (FERRY_NO_EXTENSIONS=1).
PURE_PYTHON_TESTS := tests/unit/data_plane tests/integration/test_proxy.py \
	tests/integration/test_retries.py tests/integration/test_proxy_smuggling.py \
	tests/integration/test_http11_conformance.py tests/integration/test_proxy_client_limits.py \
	tests/integration/test_tls_termination.py tests/integration/test_upstream_tls.py \
	tests/integration/test_http2.py tests/integration/test_grpc_proxy.py \
	tests/e2e/test_sticky_and_bounded_load.py \
	tests/integration/test_overload_caps.py
test: $(BUILT)
	$(BIN)/ruff check .
	$(BIN)/mypy control_plane data_plane ferry ferry_shared
	FERRY_EXPECT_HOT_PATH=compiled $(BIN)/pytest -q
	FERRY_NO_EXTENSIONS=1 FERRY_EXPECT_HOT_PATH=python $(BIN)/pytest -q $(PURE_PYTHON_TESTS)

## Benchmarks: installs nginx, HAProxy and wrk (Debian packages) if missing, then runs
## every scenario; results in bench/results/. Pass options with BENCH_ARGS="--quick".
BENCH_ARGS ?=
bench: $(BUILT)
	bash bench/install.sh
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(BUILT)
	$(BIN)/ruff check .

typecheck: $(BUILT)
	$(BIN)/mypy control_plane data_plane ferry ferry_shared

## Regenerate the committed protobuf modules from proto/*.proto.
proto: $(BUILT)
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
