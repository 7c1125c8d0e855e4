# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned so pip keeps the CPU build already on disk;
# GPU users install their CUDA build of torch into .venv first (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
OPEN_CLIP_WHEEL := open-clip-torch==3.3.0
STAMP := $(VENV)/.tagtune-installed

.PHONY: setup browser demo test lint bench screenshot clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The real CLIP BPE vocabulary, read straight out of the wheel (never imported).
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: $(OPEN_CLIP_WHEEL) -d $(VENV)/share/tagtune/wheels
	touch $(STAMP)

# Chromium for the report's browser test: installed only when missing; never fails the build.
browser:
	@sh scripts/install-chromium.sh

demo: setup
	$(BIN)/tagtune demo demo-workspace

# docs/report.png, the README's screenshot of the report of `make demo`'s workspace
screenshot: setup browser
	$(BIN)/python scripts/readme_screenshot.py --demo demo-workspace --out docs/report.png

test: setup browser
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

clean:
	rm -rf $(VENV) demo-workspace bench-out
