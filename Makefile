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

$(BIN)/fovseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	touch $@

.PHONY: install demo test test-all lint mlflow-ui plots
install: $(BIN)/fovseg

# `dvc repro`, with the proposal stages side by side and the sweep stages beside train/evaluate
# (pipeline/parallel_repro.py);
# `dvc repro` alone gives the same results, one stage at a time.
demo: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pipeline.parallel_repro

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

lint: install
	$(BIN)/ruff check .

mlflow-ui: install
	$(BIN)/python -m pipeline.tracking relocate mlflow.db  # the store may have been moved with mlartifacts/
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

plots: install  # dvc plots show, offline (vega inlined instead of loaded from a CDN)
	$(BIN)/python -m pipeline.scripts.offline_plots --out .dvc/tmp/offline_plots.html
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc plots show --html-template .dvc/tmp/offline_plots.html
