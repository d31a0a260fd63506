# The two commands in the README: `make demo` and `make test`. Both set everything up.
VENV ?= .venv
PYTHON ?= python3
# Installed before the package so that pip never resolves a bare `torch` to a multi-GB CUDA
# build on a machine without a GPU (on this machine kind the pinned wheel is the CPU build).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.mol-installed-$(EXTRAS)

.PHONY: install demo test test-ref test-slow lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/mol demo

test: install
	$(BIN)/python -m pytest

# The suite again with mergekit installed (the `bench` extra): the differential tests against
# mergekit run instead of being skipped. CI runs it as a separate step.
test-ref:
	$(MAKE) install EXTRAS=dev,bench
	$(BIN)/python -m pytest

# Slow tier: builds the full demo zoo and checks it. CI runs it as a separate step.
test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check mol tests
	$(BIN)/ruff format --check mol tests
