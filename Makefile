# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench

$(BIN)/evalkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	# The ray extra too: its tests (a local Ray cluster) run in the default suite.
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	touch $(BIN)/evalkit

setup: $(BIN)/evalkit

demo: setup
	$(BIN)/evalkit demo

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
