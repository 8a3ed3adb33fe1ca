# Quick start: `make demo` (toy preset, offline, CPU) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# pip byte-compiles every module it installs (all of torch, transformers' hundreds of model files, ...): half
# of the install (104 s -> 51 s without, 2 cores). With --no-compile, Python writes the bytecode of what is
# actually imported at its first import, which needs bytecode writing on: the targets below run with
# PYTHONDONTWRITEBYTECODE unset (some images set it; with it and no precompiled bytecode, every process
# would compile its imports again, ~10 s each).
unexport PYTHONDONTWRITEBYTECODE

# TORCH=cpu (a new venv only: `make demo TORCH=cpu`): torch and torchvision from PyTorch's CPU-only index, in
# the versions pyproject.toml allows, before the project. On Linux x86_64, pip's default is the CUDA build with
# 4.4 GB of NVIDIA libraries; for a machine without an NVIDIA GPU that is download and unpacking for nothing
# (2 cores, wheels on local disk, back to back: `make install` 64 s instead of 101 s, venv 1.9 GB instead of
# 6.3 GB). Not on a login node whose venv the GPU nodes share.
TORCH ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifneq ($(filter-out cpu,$(TORCH)),)
$(error TORCH=$(TORCH): the one choice is TORCH=cpu (leave it unset for pip's default build))
endif
TORCH_REQS = $(shell $(PY) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
	print(' '.join(repr(r) for r in d['project']['dependencies'] if r.startswith(('torch>', 'torchvision>'))))")

$(BIN)/fovseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
ifeq ($(TORCH),cpu)
	$(BIN)/pip install --quiet --no-compile --index-url $(TORCH_CPU_INDEX) $(TORCH_REQS)
endif
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	@$(BIN)/python -c "import torch, torchvision.ops" 2>/dev/null || { echo "torch and torchvision in $(VENV) do not \
	work together ($$($(BIN)/pip list 2>/dev/null | grep -E '^torch(vision)? ' | tr -s ' ' | paste -sd ',')): remove \
	$(VENV) and run make again$(if $(TORCH), without TORCH=$(TORCH),)" >&2; exit 1; }
	touch $@

.PHONY: install demo test test-all smoke lint mlflow-ui plots
install: $(BIN)/fovseg

# the whole pipeline on the toy preset: plain `dvc repro`
demo: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro
	@echo "Results: reports/README.md (tables beside the paper's numbers), reports/figures/, metrics/."
	@echo "Compare runs: make mlflow-ui (http://127.0.0.1:5000). Your own images: .venv/bin/fovseg predict IMAGES --classes \"red circle, blue cross\""

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

# the paper path at the paper's shapes (ViT-L at 896, Swin-B, 100 proposals, random weights), every stage
# through dvc repro on tiny data: about 12-15 minutes on 2 CPU cores (tests/test_paper_smoke.py)
smoke: install
	$(BIN)/python -m pytest -q -s -m paper_smoke

lint: install
	$(BIN)/ruff check .

# the MLflow UI on this machine only (127.0.0.1); another port: make mlflow-ui PORT=5001
PORT ?= 5000
mlflow-ui: install
	$(BIN)/python -m pipeline.tracking relocate mlflow.db  # the store may have been moved with mlartifacts/
	$(BIN)/python -m pipeline.tracking urls mlflow.db $(PORT)  # each experiment's runs table, model-training mode
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

# dvc plots show, offline (vega inlined instead of loaded from a CDN), into .dvc/tmp/plots/ (untracked, not a
# dvc_plots/ folder in the working tree): the loss curve, the evaluation curve and the report's PNGs
plots: install
	$(BIN)/python -m pipeline.scripts.offline_plots --out .dvc/tmp/offline_plots.html
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc plots show --html-template .dvc/tmp/offline_plots.html --out .dvc/tmp/plots
