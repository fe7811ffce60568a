# Two commands on a fresh machine: `make demo` (the whole recipe) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo
# The CPU build of torch; a bare `pip install torch` would fetch a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo smoke test lint venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: venv
	$(BIN)/tsmixit recipe --config configs/demo.yaml --run-dir $(RUN_DIR)

smoke: venv
	$(BIN)/tsmixit recipe --config configs/demo.yaml --run-dir runs/smoke --quick

lint: venv
	$(BIN)/ruff check src tests benchmarks

test: venv lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
