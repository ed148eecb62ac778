# Set-up and checks. On a fresh machine `make demo` and `make test` do everything, installing into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# One persistent XLA compilation cache for tests and demos (JAX reuses compiled programs across runs).
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.5
# equinox checks return NaN (a status here) instead of host callbacks, which would keep programs out of the cache
export EQX_ON_ERROR ?= nan
# Tests run on 2 cores: one worker each.
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-fast test-extended docs bench bench-quick lint clean help

help:
	@echo "make demo       run the demo on bundled (or ../shared) data"
	@echo "make test       install if needed, then run the full test suite"
	@echo "make test-fast  the quick tier (skips tests marked slow)"
	@echo "make lint       ruff over src, benchmarks and tests (part of make test)"
	@echo "make docs       build the documentation site (mkdocs --strict) into site/"
	@echo "make bench      run every benchmark, print figures with peer ratios, rewrite benchmarks/README.md"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cgt-twin demo --out demo_out

test: $(STAMP) lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 -m "not extended" tests

test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow and not extended" -q tests

test-extended: $(STAMP)
	$(PY) -m pytest --durations=15 -m extended tests

lint: $(STAMP)
	$(PY) -m ruff check src benchmarks tests

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/run.py

bench-quick: $(STAMP)
	$(PY) benchmarks/run.py --quick --no-readme

clean:
	rm -rf demo_out site .pytest_cache .hypothesis .jax_cache
