# Two commands set everything up on a fresh machine:
#   make run    - create/reuse .venv, install, run the main job on built-in defaults
#   make test   - create/reuse .venv, install test deps, run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: run test lint bench clean venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# No CUDA here: install the CPU build of torch explicitly (an unpinned torch pulls a multi-GB CUDA build).
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install -q torch; \
	else \
	  $(BIN)/pip install -q torch==$(TORCH_VERSION) || \
	  $(BIN)/pip install -q torch==$(TORCH_VERSION) --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/styletalk-live $(ARGS)

test: $(STAMP)
	$(BIN)/python -m tests.setup_system
	$(BIN)/ruff check .
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV)
