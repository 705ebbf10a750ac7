# One venv per interpreter, created and refreshed by the targets themselves:
# a fresh clone needs nothing but `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY313_VERSION ?= 3.13.0
VENV313 := .venv313
STAMP313 := $(VENV313)/.installed
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv demo test check static format lint types pytest pytest-313 test-load bench clean

$(STAMP): pyproject.toml setup.py conctools/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## The main job: the sample server with its seeded bugs under Locust load; the report goes to build/demo/.
demo: venv
	$(BIN)/conctools demo --out build/demo

## The whole suite: static checks, the tests on 3.11, then on 3.13 where pyenv has it.
test: static pytest pytest-313

## format + lint + types + tests (3.11): the one local check command.
check: static pytest

static: format lint types

format: venv
	$(BIN)/ruff format --check conctools tests benchmarks loadtests examples

lint: venv
	$(BIN)/ruff check conctools tests benchmarks loadtests examples

types: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# 3.13 runs the suite too (load tests stay on 3.11: Locust and its gevent run there).
pytest-313:
	@if PYENV_VERSION=$(PY313_VERSION) $(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then \
		if [ ! -f $(STAMP313) ] || [ pyproject.toml -nt $(STAMP313) ] || [ setup.py -nt $(STAMP313) ] || [ conctools/_speedups.c -nt $(STAMP313) ]; then \
			PYENV_VERSION=$(PY313_VERSION) $(PYTHON) -m venv $(VENV313) && \
			$(VENV313)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip && \
			$(VENV313)/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' && \
			touch $(STAMP313) || exit 1; \
		fi; \
		$(VENV313)/bin/python -m pytest -m "not load" $(PYTEST_ARGS); \
	else \
		echo "pytest-313: skipped, Python $(PY313_VERSION) is not available here (PYENV_VERSION=$(PY313_VERSION) $(PYTHON))"; \
	fi

## Only the long load tests.
test-load: venv
	$(BIN)/python -m pytest -m load $(PYTEST_ARGS)

## Overhead measurements quoted in the README.
bench: venv
	$(BIN)/python benchmarks/bench_traced.py
	$(BIN)/python benchmarks/instr_traced.py
	$(BIN)/python benchmarks/bench_locks.py
	$(BIN)/python benchmarks/bench_contended.py
	$(BIN)/python benchmarks/bench_loopmon.py
	$(BIN)/python benchmarks/bench_watchdog.py
	$(BIN)/python benchmarks/bench_profile.py
	$(BIN)/python benchmarks/bench_server.py

clean:
	rm -rf $(VENV) $(VENV313) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
