# One venv per interpreter, created and refreshed by the targets themselves:
# a fresh clone needs nothing but `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY312_VERSION ?= 3.12.1
VENV312 := .venv312
PY313_VERSION ?= 3.13.0
VENV313 := .venv313
BIN := $(VENV)/bin
PYTEST_ARGS ?=
PYTEST_MARK ?=

.PHONY: venv demo test check static format lint types pytest pytest-312 pytest-313 test-load bench clean

# The C extensions are optional (setup.py): a compile error falls back to the pure-Python paths without a word
# from pip, so say so here (tests/test_speedups.py::TestBuild fails on it too).
CHECK_SPEEDUPS = import conctools.locks as l, sys; sys.exit(0 if l.SPEEDUPS else 1)
SPEEDUPS_MISSING = make: conctools' C extension did not build or import here: its pure-Python paths run instead \
(see the compiler's error with: pip install -v -e .)

$(STAMP): pyproject.toml setup.py conctools/_speedups.c conctools/_tracing.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@CONCTOOLS_PURE_PYTHON= $(BIN)/python -c '$(CHECK_SPEEDUPS)' || echo "$(SPEEDUPS_MISSING)" >&2
	touch $(STAMP)

venv: $(STAMP)

## The main job: the sample server with its seeded bugs under Locust load; the report goes to build/demo/.
demo: venv
	$(BIN)/conctools demo --out build/demo

## The whole suite: static checks, the load tests (3.11, alone: they drive a server with Locust), then
## every other test on 3.11, 3.12 and 3.13 (where pyenv has them) side by side.
# The suites spend most of their time waiting on the programs they start (about 0.6 of a core each
# here), so the three run at the same time; -O prints each one whole when it ends. Python 3.13's run
# has the stdlib's lock suites of 3.13 itself: the other two skip their own 3.13 subprocess run of them.
test: static
	@$(MAKE) --no-print-directory test-load
	@CONCTOOLS_CONFORMANCE_313=0 $(MAKE) --no-print-directory -j3 -O PYTEST_MARK="not load" pytest pytest-312 pytest-313

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
	$(BIN)/python -m pytest $(if $(PYTEST_MARK),-m "$(PYTEST_MARK)") $(PYTEST_ARGS)

# 3.12 and 3.13 run the suite too (load tests stay on 3.11: Locust and its gevent run there).
# $(call other_python,VERSION,VENV): make VENV from pyenv's VERSION when needed, then run the tests.
define other_python
	@if PYENV_VERSION=$(1) $(PYTHON) -c 'import sys; assert sys.version_info[:2] == tuple(map(int, "$(1)".split(".")[:2]))' 2>/dev/null; then \
		if [ ! -f $(2)/.installed ] || [ pyproject.toml -nt $(2)/.installed ] || [ setup.py -nt $(2)/.installed ] || [ conctools/_speedups.c -nt $(2)/.installed ] || [ conctools/_tracing.c -nt $(2)/.installed ]; then \
			PYENV_VERSION=$(1) $(PYTHON) -m venv $(2) && \
			$(2)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip && \
			$(2)/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' && \
			{ CONCTOOLS_PURE_PYTHON= $(2)/bin/python -c '$(CHECK_SPEEDUPS)' || echo "$(SPEEDUPS_MISSING)" >&2; } && \
			touch $(2)/.installed || exit 1; \
		fi; \
		$(2)/bin/python -m pytest -m "not load" $(PYTEST_ARGS); \
	else \
		echo "tests on Python $(1): skipped, it is not available here (PYENV_VERSION=$(1) $(PYTHON))"; \
	fi
endef

pytest-312:
	$(call other_python,$(PY312_VERSION),$(VENV312))

pytest-313:
	$(call other_python,$(PY313_VERSION),$(VENV313))

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
	$(BIN)/python benchmarks/bench_gil.py
	$(BIN)/python benchmarks/bench_server.py

clean:
	rm -rf $(VENV) $(VENV312) $(VENV313) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
