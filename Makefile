# Quickstart:  make demo   (set up + train a small byte LM on the embedded corpus)
#              make test   (set up + run the test suite on 8 simulated CPU devices; TPU compiles need no TPU)
#              make test-fast  (the same without the tests marked slow: those that train or compile a model)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_FLAGS ?= -n 2 --durations=25

.PHONY: setup demo test test-fast bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench,hf,tpu]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/pcomp demo

test: setup
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(BIN)/python -m pytest -q $(TEST_FLAGS) tests

test-fast: setup
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(BIN)/python -m pytest -q $(TEST_FLAGS) -m "not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
