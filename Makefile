# Two entry points, both self-contained on a fresh machine:
#   make demo   creates .venv, installs lensdask, runs the embedded default job
#   make test   creates .venv, installs lensdask with its test extra, runs the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-lensdask
PYTEST_ARGS ?=

.PHONY: demo test lint install benchmark clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lensdask demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff lint and format check (rules in pyproject.toml) and mypy on the package (settings in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check lensdask tests benchmarks
	$(VENV)/bin/ruff format --check lensdask tests benchmarks
	$(VENV)/bin/mypy lensdask

benchmark: $(STAMP)
	$(PY) benchmarks/bench_search_parts.py
	$(PY) benchmarks/bench_search.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
