# Quickstart:  make demo   (set up + train a small byte LM on the embedded corpus)
#              make test   (set up + run the test suite on 8 simulated CPU devices; TPU compiles need no TPU)
#              make test-fast  (the same without the tests marked slow: those that train or compile a model)
# The tests keep compiled XLA programs in .pytest_cache/xla between runs (tests/conftest.py).
# `make demo` installs pcomp alone; the tests also need the dev, bench, hf and tpu extras (PyTorch for
# the Hugging Face golden tests, compressors for the baselines, libtpu for the TPU compiles).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_FLAGS ?= -n 2 --durations=25
TEST_EXTRAS ?= dev,bench,hf,tpu

.PHONY: setup setup-test demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(BIN)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-test: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $(BIN)/.installed $@

setup: $(BIN)/.installed

setup-test: $(BIN)/.installed-test

demo: setup
	$(BIN)/pcomp demo

test: setup-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(BIN)/python -m pytest -q $(TEST_FLAGS) tests

test-fast: setup-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(BIN)/python -m pytest -q $(TEST_FLAGS) -m "not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
