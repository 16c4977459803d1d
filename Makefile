# Two entry points, both self-contained on a fresh machine:
#   make demo   creates .venv, installs lensdask, runs the embedded default job
#   make test   creates .venv, installs lensdask with its test extra, runs the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-lensdask
PYTEST_ARGS ?=

.PHONY: demo test lint install benchmark clean gpu-kit gpu-kit-rehearsal gpu-check-cpu

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

# The GPU kit (benchmarks/gpu_kit.py): .whl/ holds the wheels a lent GPU machine's image lacks (Python 3.12,
# manylinux x86-64, at most 60 MiB), lensdask's own among them; benchmarks/gpu_check.sh installs them there.
gpu-kit: $(STAMP)
	$(PY) benchmarks/gpu_kit.py build --python-version 3.12 --dest .whl

# The kit for this Python, installed with no index into a venv that holds only the image's packages, then a CPU
# search, training and a Pcodec store read without imagecodecs (tests/test_gpu_kit.py runs the same in CI).
gpu-kit-rehearsal: gpu-kit
	$(PY) benchmarks/gpu_kit.py rehearse --device-kit .whl

# Every step of the GPU check on the CPU, tiny (a few hundred cutouts): report in gpu-check-out/.
gpu-check-cpu: $(STAMP)
	PYTHON=$(PY) benchmarks/gpu_check.sh --cpu --tiny --out gpu-check-out

clean:
	rm -rf $(VENV) demo-output .pytest_cache .whl build/gpu-kit-py* gpu-check-out
