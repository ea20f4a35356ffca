# Two commands do all set-up on a fresh machine:
#   make demo   builds the whole pipeline offline on the built-in corpus
#   make test   runs the test suite
# Both create .venv on first use. TORCH_SPEC picks the torch build (the CPU wheel by default).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/tinyllama: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]" "$(TORCH_SPEC)"  # restated, or pip 26 swaps in the newest (CUDA) torch
	touch $@

demo: $(BIN)/tinyllama
	$(BIN)/tinyllama run --preset demo

test: lint
	$(BIN)/python -m pytest -q --durations=15 -n auto --maxprocesses 4 --dist loadfile

lint: $(BIN)/tinyllama
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(BIN)/tinyllama
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_dedup.py

clean:
	rm -rf $(VENV) .tinyllama
