# Two commands on a fresh machine: `make demo` and `make test` (each installs first when .venv is missing).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install board-venv demo test test-fast bench results clean

$(BIN)/edvit-tool: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/edvit-tool

install: $(BIN)/edvit-tool

board-venv:
	bash scripts/make-board-venv.sh
	bash scripts/make-board-venv.sh --tflite-runtime

demo: install
	$(BIN)/edvit-tool demo

test: install board-venv
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Benchmarks print tables and write bench/results/*.json (export.py reads the demo build: run `make demo` first).
bench: install board-venv
	$(BIN)/python bench/compile.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/worker_overhead.py
	$(BIN)/python bench/profile_boards.py
	$(BIN)/python bench/distributed.py
	$(BIN)/python bench/links.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/paper.py
	$(BIN)/python bench/paper_e2e.py

# README's "Results" block from bench/results/*.json (run after `make bench`)
results:
	$(BIN)/python scripts/results_section.py

clean:
	rm -rf build runs/digits-build .pytest_cache
